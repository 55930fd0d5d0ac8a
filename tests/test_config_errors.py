"""Configuration and input errors: a repeated YAML key, a float where an integer belongs, an input path
that is not the kind of file asked for, an empty local_model_roots. Each error is one line naming the key
or the file. Dry runs (`snakemake -n`, about 2 s) in a temporary directory with the tiny test config."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, workflow_config
from inference_optim_llm import bounds
from inference_optim_llm.strict_yaml import DuplicateKeyError, load, loads


def dry_run(wd: Path, config_text: str, *args: str) -> subprocess.CompletedProcess:
    (wd / "config").mkdir(parents=True, exist_ok=True)
    (wd / "config" / "config.yaml").write_text(config_text)
    if not (wd / "data").exists():
        (wd / "data").symlink_to(REPO / "data")
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd),
                           "--cores", "1", "-n", *args], capture_output=True, text=True, timeout=300)


def tiny(**top) -> dict:
    config = workflow_config("tiny")
    config.update(top)
    return config


def assert_refused(proc, expected: str, wd: Path):
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and expected in out, out[-2000:]
    assert not (wd / "results").exists()


# -- a key written twice -------------------------------------------------------------------------------

def test_a_repeated_key_is_refused_at_every_level():
    with pytest.raises(DuplicateKeyError, match=r"^f.yaml: duplicate key 'models' at line 3 \(first at line 1\)$"):
        loads("models: {}\nbenchmark: {}\nmodels: {}\n", "f.yaml")
    with pytest.raises(DuplicateKeyError, match=r"duplicate key 'dtype' at line 4 \(first at line 2\)"):
        loads("benchmark:\n  dtype: float32\n  seed: 1\n  dtype: bfloat16\n", "f.yaml")
    with pytest.raises(DuplicateKeyError, match="duplicate key 'tokens' at line 1"):
        loads("- {tokens: 8, tokens: 9}\n", "f.yaml")
    # a merge key overrides on purpose: not a repetition
    assert loads("a: &x {n: 1}\nb:\n  <<: *x\n  n: 2\n") == {"a": {"n": 1}, "b": {"n": 2}}


def test_a_repeated_key_in_a_json_config_is_refused(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"benchmark": {"seed": 1}, "benchmark": {"seed": 2}}')
    with pytest.raises(DuplicateKeyError, match=f"{f}: duplicate key 'benchmark'"):
        load(f)


def test_a_second_benchmark_block_is_refused_naming_both_lines(tmp_path):
    text = yaml.safe_dump(tiny(), sort_keys=False)
    first = text.splitlines().index("benchmark:") + 1
    text += "benchmark:\n  seed: 3\n"
    proc = dry_run(tmp_path, text)
    last = len(text.splitlines()) - 1
    assert_refused(proc, f"config/config.yaml: duplicate key 'benchmark' at line {last} (first at line {first})",
                   tmp_path)


def test_a_repeated_nested_key_in_an_extra_configfile_is_refused(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("benchmark:\n  dtype: float32\n  device: cpu\n  dtype: bfloat16\n")
    proc = dry_run(tmp_path, yaml.safe_dump(tiny()), "--configfile", str(extra))
    assert_refused(proc, "extra.yaml: duplicate key 'dtype' at line 4 (first at line 2)", tmp_path)


# -- integers are integers -----------------------------------------------------------------------------

def test_a_float_batch_size_is_refused_by_key(tmp_path):
    config = tiny()
    config["matrix"][0]["batch_sizes"] = [1, 2.0]
    proc = dry_run(tmp_path, yaml.safe_dump(config))
    assert_refused(proc, "config matrix[0].batch_sizes[1]: 2.0 is not an integer", tmp_path)


def _integer_keys(node, name="", found=None) -> set[str]:
    """The name of every property the schema types as integer (directly, through $ref, allOf or items)."""
    found = set() if found is None else found
    defs = bounds.config_schema()["$defs"]
    if isinstance(node, dict):
        target = defs[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
        if target.get("type") == "integer":
            found.add(name)
        for key, sub in node.items():
            if key == "properties":
                for prop, s in sub.items():
                    _integer_keys(s, prop, found)
            elif key in ("items", "additionalProperties", "then", "else"):
                _integer_keys(sub, name, found)
            elif key == "allOf":
                for s in sub:
                    _integer_keys(s, name, found)
    return found


# One float (and one bool) per integer-typed key of the schema: (where in the config, the key's name).
FILE_SET = {"file": "data/prompts.txt"}
INTEGER_CASES = {
    "batch_sizes": lambda c, v: c["matrix"][0].update(batch_sizes=[v]),
    "gpus": lambda c, v: c["matrix"][0].update(gpus=[v]),
    "tokens": lambda c, v: c["prompt_sets"]["p8"].update(tokens=v),
    "count": lambda c, v: c["prompt_sets"]["p8"].update(count=v),
    "limit": lambda c, v: c["prompt_sets"].update(p8={**FILE_SET, "limit": v}),
    **{k: (lambda k: lambda c, v: c["benchmark"].update({k: v}))(k)
       for k in ("max_new_tokens", "repetitions", "warmup", "seed", "threads", "max_repetitions")},
    **{k: (lambda k: lambda c, v: c["serving"].update({k: v}))(k)
       for k in ("requests", "max_requests", "warmup_requests")},
}
WHERE = {"batch_sizes": "matrix[0].batch_sizes[0]", "gpus": "matrix[0].gpus[0]", "tokens": "prompt_sets.p8.tokens",
         "count": "prompt_sets.p8.count", "limit": "prompt_sets.p8.limit", "requests": "serving.requests",
         "max_requests": "serving.max_requests", "warmup_requests": "serving.warmup_requests"}


def test_every_integer_key_of_the_schema_is_covered():
    assert _integer_keys(bounds.config_schema()) == set(INTEGER_CASES)


@pytest.mark.parametrize("key", sorted(INTEGER_CASES))
@pytest.mark.parametrize("value", [4.0, True], ids=["float", "bool"])
def test_a_float_or_bool_where_an_integer_belongs_is_refused_by_key(key, value):
    config = tiny(serving={"matrix": [], "requests": 16})
    config["matrix"][0].update(gpus=[1])
    bounds.check_config(config)                              # the base config passes
    INTEGER_CASES[key](config, value)
    where = WHERE.get(key, f"benchmark.{key}")
    expected = "4.0 is not an integer" if value is not True else "True is not of type 'integer'"
    with pytest.raises(ValueError, match="^" + re.escape(f"config {where}: {expected}") + "$"):
        bounds.check_config(config)


def test_flags_and_specs_refuse_a_float_where_an_integer_belongs():
    with pytest.raises(ValueError, match=r"^--batch-size: 2.0 is not an integer$"):
        bounds.check("$defs.batch_size", 2.0, "--batch-size")
    assert bounds.check("$defs.batch_size", 2, "--batch-size") == 2
    assert bounds.check("benchmark.telemetry_interval_s", 0.05) == 0.05     # numbers stay numbers
    assert bounds.check("benchmark.telemetry_interval_s", 1) == 1


def test_an_engine_option_refuses_a_float_where_an_integer_belongs():
    from inference_optim_llm.engines import check_options
    assert check_options("compiled", {"cache_len": 64}) == {"cache_len": 64}
    with pytest.raises(ValueError, match=r"^config engine_options.compiled.cache_len: 64.0 is not of type 'integer'$"):
        check_options("compiled", {"cache_len": 64.0}, "config engine_options")


# -- input paths: what they are, not only whether they exist --------------------------------------------

def test_prompt_files_say_what_they_are(tmp_path):
    from inference_optim_llm.prompts import PromptError, read_prompt_file
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone.txt")
    cases = {tmp_path / "adir": "is a directory, not a file",
             Path("/dev/null"): "is not a regular file (character device)",
             tmp_path / "fifo": "is not a regular file (named pipe)",   # never opened: a read would block
             tmp_path / "missing.txt": "does not exist",
             tmp_path / "dangling": f"is a link to {tmp_path / 'gone.txt'}, which does not exist",
             tmp_path / "adir" / "x" / "y.txt": "does not exist"}
    for path, expected in cases.items():
        with pytest.raises(PromptError, match="^" + re.escape(f"prompt file {path} {expected}") + "$"):
            read_prompt_file(path)


def test_a_prompt_file_that_is_a_directory_or_a_device_is_named_in_the_config(tmp_path):
    (tmp_path / "prompts").mkdir()
    for path, expected in (("prompts", "prompt file prompts is a directory, not a file"),
                           ("/dev/null", "prompt file /dev/null is not a regular file (character device)")):
        proc = dry_run(tmp_path, yaml.safe_dump(tiny(prompt_sets={"p8": {"file": path}})))
        assert_refused(proc, f"config prompt_sets.p8.file: {expected}", tmp_path)


def test_the_cli_names_what_its_prompt_file_is(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", "run", "baseline", "--prompts-file",
                           str(tmp_path), "--device", "cpu"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == f"error: prompt file {tmp_path} is a directory, not a file"


def _hf_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_local_sources_say_what_they_are(tmp_path):
    from inference_optim_llm.models import ModelSourceError, resolve_local
    roots = [tmp_path]
    (tmp_path / "afile").write_text("x")
    (tmp_path / "noconf").mkdir()
    (tmp_path / "dirconf" / "config.json").mkdir(parents=True)
    cases = {"afile": f"local directory {tmp_path / 'afile'} is a file, not a directory",
             "missing": f"local directory {tmp_path / 'missing'} does not exist",
             "noconf": f"{tmp_path / 'noconf'} has no config.json",
             "dirconf": f"{tmp_path / 'dirconf' / 'config.json'} is a directory, not a file"}
    for name, expected in cases.items():
        with pytest.raises(ModelSourceError, match=re.escape(f"models.m.source: {expected}")):
            resolve_local("m", str(tmp_path / name), roots)
    assert resolve_local("m", str(_hf_dir(tmp_path / "ok")), roots) == tmp_path / "ok"


# -- local_model_roots: the allow-list ----------------------------------------------------------------------

def test_an_empty_local_model_roots_allows_no_local_source(tmp_path):
    from inference_optim_llm.models import ModelSourceError, resolve_local
    model = _hf_dir(tmp_path / "models" / "m")
    with pytest.raises(ModelSourceError, match="local_model_roots is empty, so no local: source is allowed"):
        resolve_local("m", str(model), [])
    assert resolve_local("m", str(model), [tmp_path / "models"]) == model
    assert resolve_local("m", str(model), None) == model     # the command line's own path: no allow-list


def test_an_empty_local_model_roots_refuses_the_workflow_naming_the_key(tmp_path):
    _hf_dir(tmp_path / "models" / "m")
    config = tiny(models={"tiny": {"source": "local:models/m"}}, local_model_roots=[])
    proc = dry_run(tmp_path, yaml.safe_dump(config))
    assert_refused(proc, "config models.tiny.source: local_model_roots is empty, so no local: source is allowed; "
                         f"add {tmp_path / 'models'} (or a directory above it) to local_model_roots", tmp_path)
    config["local_model_roots"] = ["models"]
    proc = dry_run(tmp_path, yaml.safe_dump(config))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


def test_a_spec_json_refuses_a_repeated_key_and_a_non_object():
    from inference_optim_llm.spec import BenchSpec
    with pytest.raises(ValueError, match=r"^--spec: duplicate key 'batch_size'"):
        BenchSpec.from_json('{"batch_size": 1, "batch_size": 2}')
    with pytest.raises(ValueError, match=r"^--spec: a JSON object is expected, got list"):
        BenchSpec.from_json('[1, 2]')
    with pytest.raises(ValueError, match=r"^--spec: not valid JSON"):
        BenchSpec.from_json('{"batch_size": ')
