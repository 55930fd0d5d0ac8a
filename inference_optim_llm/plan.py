"""The benchmark matrix of a workflow configuration: its cells, the paths of every file it makes, and
each target's spec, built once here (workflow/rules/common.smk is thin glue over this).

A benchmark or reference target's spec is a `spec.BenchSpec`, checked when it is built; a build's spec
is the plain dict that `build.build` takes (also its between-workflow cache key).
"""
from __future__ import annotations

from dataclasses import asdict
from functools import cache
from itertools import product
from pathlib import Path

from inference_optim_llm.engines import ENGINES, build_key, built_engines, check_options, runtime_options
from inference_optim_llm.intermediates import IntermediateError, check_existing
from inference_optim_llm.models import ModelSourceError, check_prompt_lengths, check_source
from inference_optim_llm.prompts import PromptError, read_prompt_file
from inference_optim_llm.servers import ServerEntry
from inference_optim_llm.spec import INTERFERENCE_KEYS, TRUST_KEYS, BenchSpec, ServeSpec

CALIBRATION = "results/calibration/bandwidth.json"


def tp_suffix(gpus) -> str:
    """The tensor-parallel degree in a result's file name: none for 1 (bs4.json), -tpN above (bs4-tp2.json)."""
    return f"-tp{gpus}" if int(gpus) > 1 else ""


def gpus_of(suffix: str) -> int:
    return int(suffix[3:]) if suffix else 1


def weights_suffix(weights) -> str:
    """The weight storage in a result's file name: none for default, -fp8 (bs4-fp8.json, bs4-tp2-fp8.json)."""
    return "" if weights == "default" else f"-{weights}"


def weights_of(suffix: str) -> str:
    return suffix[1:] if suffix else "default"


def result_path(model, engine, prompt_set, batch, gpus=1, weights="default") -> str:
    return f"results/runs/{model}/{engine}/{prompt_set}/bs{batch}{tp_suffix(gpus)}{weights_suffix(weights)}.json"


def reference_path(model, prompt_set) -> str:
    return f"results/reference/{model}/{prompt_set}.json"


def serving_result_path(model, server, prompt_set, load) -> str:
    return f"results/serving/{model}/{server}/{prompt_set}/{load}.json"


def served_model_path(model) -> str:
    return f"resources/served/{model}"


def model_path(model) -> str:
    return f"resources/models/{model}"


def artifact_path(model, engine) -> str:
    return f"resources/engines/{model}/{engine}"


class Plan:
    def __init__(self, config: dict):
        self.config = config
        self.bench = config["benchmark"]

    # -- the matrix ---------------------------------------------------------------------------------
    @property
    def local_roots(self) -> list[Path]:
        return [Path(r) for r in self.config["local_model_roots"]]

    @cache  # noqa: B019 (one Plan per workflow)
    def cells(self) -> list[tuple]:
        """Every (model, engine, prompt_set, batch_size, gpus, weights) of the matrix, once, in config order;
        only the engines that the optional `engines` key names."""
        only = self.config.get("engines")
        seen = {}
        for block in self.config["matrix"]:
            for cell in product(block["models"], block["engines"], block["prompt_sets"], block["batch_sizes"],
                                block.get("gpus", [1]), block.get("weights", ["default"])):
                if only is None or cell[1] in only:
                    seen.setdefault(cell, None)
        return list(seen)

    def all_results(self) -> list[str]:
        return [result_path(*c) for c in self.cells()]

    @cache  # noqa: B019 (one Plan per workflow)
    def serving_cells(self) -> list[tuple]:
        """Every (model, server, prompt_set, load) of the serving matrix, once, in config order."""
        seen = {}
        for block in self.config.get("serving", {}).get("matrix", []):
            for cell in product(block["models"], block["servers"], block["prompt_sets"], block["loads"]):
                seen.setdefault(cell, None)
        return list(seen)

    def serving_results(self) -> list[str]:
        return [serving_result_path(*c) for c in self.serving_cells()]

    def engine_cells(self, engine) -> list[tuple]:
        """One engine's cells; an engine absent from the (selected) matrix gets the matrix's cells, so that
        `snakemake trtllm` on any config shows what that engine does (or why it cannot run)."""
        mine = [c for c in self.cells() if c[1] == engine]
        return mine or sorted({(m, engine, p, b, g, w) for m, _, p, b, g, w in self.cells()})

    def engine_result_paths(self, engine) -> list[str]:
        return [result_path(*c) for c in self.engine_cells(engine)]

    # -- inputs of a target -----------------------------------------------------------------------------
    def prompt_files(self, prompt_sets) -> list[str]:
        sets = self.config["prompt_sets"]
        return [sets[p]["file"] for p in sorted(set(prompt_sets)) if "file" in sets[p]]

    def reference_input(self, model, prompt_set) -> str | None:
        return reference_path(model, prompt_set) if self.bench["token_agreement"] else None

    def calibration_input(self) -> str | None:
        return CALIBRATION if self.bench["calibrate"] else None

    def artifact_input(self, model, engine) -> str | None:
        return artifact_path(model, engine) if engine in built_engines() else None

    # -- specs --------------------------------------------------------------------------------------------
    def trust_remote_code(self, model) -> bool:
        return bool(self.config["models"][model].get("trust_remote_code", False))

    def engine_options(self, engine) -> dict:
        return runtime_options(engine, self.config["engine_options"].get(engine, {}))

    def bench_spec(self, model, engine, prompt_set, batch_size, gpus=1, weights="default", *, reference=True) -> dict:
        """The spec of a benchmark target (reference=False: of the reference-tokens target)."""
        b = self.bench
        spec = BenchSpec(
            model=model, model_dir=model_path(model), engine=engine, prompt_set=prompt_set,
            prompt_spec=self.config["prompt_sets"][prompt_set], batch_size=int(batch_size), gpus=int(gpus),
            weights=weights,
            max_new_tokens=b["max_new_tokens"], repetitions=b["repetitions"], warmup=b["warmup"], seed=b["seed"],
            device=b["device"], dtype=b["dtype"], telemetry_interval_s=b["telemetry_interval_s"],
            strict=b["strict"], refuse_busy_gpu=b["refuse_busy_gpu"], engine_options=self.engine_options(engine),
            reference=self.reference_input(model, prompt_set) if reference else None,
            calibration=self.calibration_input() if reference else None,
            artifact_dir=self.artifact_input(model, engine) if reference else None,
            trust_remote_code=self.trust_remote_code(model), **{k: b[k] for k in TRUST_KEYS})
        return asdict(spec)

    def reference_spec(self, model, prompt_set) -> dict:
        return self.bench_spec(model, "baseline", prompt_set, 1, self.reference_gpus(model), reference=False)

    def reference_gpus(self, model) -> int:
        """The reference (baseline, batch 1) runs on the fewest GPUs any cell of the model uses: a model that
        the matrix runs only on several GPUs (70B shapes) would not fit on one."""
        return min((c[4] for c in self.cells() if c[0] == model), default=1)

    def build_spec(self, model, engine) -> dict:
        """What changes the artifact: the model, the shapes the matrix uses with it, dtype, device, options,
        and the host facts (versions, GPU) the engine's build depends on."""
        mine = [c for c in self.engine_cells(engine) if c[0] == model]
        b = self.bench
        spec = {
            "model_dir": model_path(model),
            # One process's shapes with default weights: a tensor-parallel or fp8 job compiles its own step
            # (compiled.result_fields).
            "batch_sizes": sorted({c[3] for c in mine if c[4] == 1 and c[5] == "default"}),
            "prompt_sets": {p: self.config["prompt_sets"][p] for p in sorted({c[2] for c in mine})},
            "max_new_tokens": b["max_new_tokens"], "seed": b["seed"], "device": b["device"], "dtype": b["dtype"],
            "engine_options": self.engine_options(engine), "strict": b["strict"],
            "trust_remote_code": self.trust_remote_code(model),
        }
        spec.update(self._host_build_key(engine))
        return spec

    @cache  # noqa: B019 (host facts for the build keys: read once per workflow, not once per job)
    def _host_build_key(self, engine) -> dict:
        return build_key(engine, self.config["engine_options"].get(engine, {}))

    def build_prompt_files(self, model, engine) -> list[str]:
        return self.prompt_files(c[2] for c in self.engine_cells(engine) if c[0] == model)

    def server_entry(self, server) -> "ServerEntry":
        return ServerEntry.from_config(server, self.config["servers"][server])

    def serving_model_input(self, model, server) -> str:
        """The directory a server loads (and the client's tokenizer): the serving copy (without EOS, with the
        weights of a synthetic model) where the server cannot be told to ignore EOS or the model has no
        weights file, else the model's own."""
        synthetic = self.config["models"][model]["source"].startswith("synthetic:")
        if synthetic or self.server_entry(server).length_control == "generation_config":
            return served_model_path(model)
        return model_path(model)

    def serve_spec(self, model, server, prompt_set, load) -> dict:
        b, s = self.bench, self.config["serving"]
        spec = ServeSpec(
            model=model, model_dir=self.serving_model_input(model, server), server=server,
            server_entry=self.config["servers"][server], prompt_set=prompt_set,
            prompt_spec=self.config["prompt_sets"][prompt_set], load=load, max_new_tokens=b["max_new_tokens"],
            requests=s["requests"], min_duration_s=s["min_duration_s"], ci_target_rel=s["ci_target_rel"],
            max_requests=s["max_requests"], max_duration_s=s["max_duration_s"], warmup_requests=s["warmup_requests"],
            burstiness=s["burstiness"], request_timeout_s=s["request_timeout_s"], slo=s["slo"], seed=b["seed"],
            device=b["device"], dtype=b["dtype"], telemetry_interval_s=b["telemetry_interval_s"], strict=b["strict"],
            refuse_busy_gpu=b["refuse_busy_gpu"], trust_remote_code=self.trust_remote_code(model),
            **{k: b[k] for k in INTERFERENCE_KEYS})
        return asdict(spec)

    # -- checks --------------------------------------------------------------------------------------------
    def check(self) -> None:
        """What the JSON schema cannot say: cross-references, registered engines, files, model sources,
        lengths against contexts, and the existing intermediates. Errors name the key or the file."""
        config = self.config
        for i, block in enumerate(config["matrix"]):
            for key in ("models", "prompt_sets"):
                for name in block[key]:
                    if name not in config[key]:
                        raise ValueError(f"config matrix[{i}].{key}: {name!r} is not defined under {key}: "
                                         f"(defined: {', '.join(config[key])})")
        if not config["matrix"] and not config["serving"]["matrix"]:
            raise ValueError("config: nothing to measure (matrix and serving.matrix are both empty)")
        for i, block in enumerate(config["serving"]["matrix"]):
            for key in ("models", "servers", "prompt_sets"):
                for name in block[key]:
                    if name not in config[key]:
                        raise ValueError(f"config serving.matrix[{i}].{key}: {name!r} is not defined under {key}: "
                                         f"(defined: {', '.join(config[key]) or 'none'})")
        for name, entry in config["servers"].items():
            ServerEntry.from_config(name, entry)
        registered = ", ".join(ENGINES)
        for i, block in enumerate(config["matrix"]):
            for name in block["engines"]:
                if name not in ENGINES:
                    raise ValueError(f"config matrix[{i}].engines: {name!r} is not a registered engine ({registered})")
        for name in list(config.get("engines") or []) + list(config["engine_options"]):
            if name not in ENGINES:
                raise ValueError(f"config engines / engine_options: {name!r} is not a registered engine "
                                 f"({registered})")
        in_matrix = sorted({e for block in config["matrix"] for e in block["engines"]})
        for name in config.get("engines") or []:
            if name not in in_matrix:
                raise ValueError(f"config engines: {name!r} is not an engine of the matrix "
                                 f"(its engines: {', '.join(in_matrix)})")
        used_sets = {p for block in config["matrix"] + config["serving"]["matrix"] for p in block["prompt_sets"]}
        for name, spec in config["prompt_sets"].items():
            if "file" in spec and name in used_sets:
                try:
                    read_prompt_file(spec["file"])
                except PromptError as e:
                    raise ValueError(f"config prompt_sets.{name}.file: {e}") from None
        for name, spec in config["models"].items():
            try:
                check_source(name, spec["source"], self.local_roots)
            except ModelSourceError as e:
                raise ValueError(f"config {e}") from None
        for engine, options in config["engine_options"].items():
            check_options(engine, options, "config engine_options")
        check_prompt_lengths(config, self.cells() + self.serving_cells(), self.local_roots)
        cells = self.cells()
        try:  # existing intermediates: a corrupt one stops the run here, before any result is deleted
            check_existing(
                [CALIBRATION] if self.bench["calibrate"] else [],
                sorted({reference_path(m, p) for m, _, p, *_ in cells}) if self.bench["token_agreement"] else [],
                [model_path(m) for m in sorted({c[0] for c in cells + self.serving_cells()})]
                + sorted({self.serving_model_input(m, srv) for m, srv, _, _ in self.serving_cells()}),
                sorted({artifact_path(m, e) for m, e, *_ in cells if e in built_engines()}),
                self.all_results() + self.serving_results(),
            )
        except IntermediateError as e:
            raise ValueError(f"intermediate file {e}") from None
