"""A target's spec, built once (plan.py for the workflow, cli.py for the CLI's `run`), checked when built
against the configuration's bounds, and turned into an engine's settings by one constructor."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from inference_optim_llm import bounds
from inference_optim_llm.engines import ENGINES, WEIGHTS, EngineSettings, check_options
from inference_optim_llm.hostfacts import check_device
from inference_optim_llm.models import check_name
from inference_optim_llm.strict_yaml import json_object

# benchmark.* keys of issue 13 (enough measurement, then interference), carried by the specs as they are
MEASURE_KEYS = ("min_measure_s", "ci_target_rel", "max_repetitions", "max_measure_s")   # static batches only
INTERFERENCE_KEYS = ("idle_power_s", "interference_cpu_cores", "noisy_half_width_rel", "on_interference")
TRUST_KEYS = MEASURE_KEYS + INTERFERENCE_KEYS


class _FromJson:
    @classmethod
    def from_json(cls, text: str):
        """A spec from the CLI's --spec JSON: an unknown or repeated key is an error naming it."""
        try:
            data = json.loads(text, object_pairs_hook=lambda pairs: json_object("--spec", pairs))
        except json.JSONDecodeError as e:
            raise ValueError(f"--spec: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"--spec: a JSON object is expected, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"--spec: unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class BenchSpec(_FromJson):
    """One benchmark target. Built by Snakemake (common.smk) or by the CLI's `run` flags."""
    model: str
    model_dir: str
    engine: str
    prompt_set: str
    prompt_spec: dict                 # {"file": path} or {"tokens": N, "count": C}
    batch_size: int
    max_new_tokens: int
    gpus: int = 1                     # tensor-parallel degree (tp.py)
    weights: str = "default"          # weight storage: default (dtype) or fp8 (fp8.py)
    repetitions: int = 3
    warmup: int = 1
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    telemetry_interval_s: float = 0.05
    strict: bool = False              # unavailable engine / OOM: error instead of a recorded status
    refuse_busy_gpu: bool = False
    record_token_times: bool = True
    engine_options: dict = field(default_factory=dict)
    artifact_dir: str | None = None
    reference: str | None = None      # reference tokens file, for token agreement
    calibration: str | None = None    # measured bandwidth file (calibrate), for the limit
    trust_remote_code: bool = False   # the config's models.<name>.trust_remote_code, for this run
    min_measure_s: float = 0          # enough measurement (static_batches.measure's stopping rule)
    ci_target_rel: float = 0
    max_repetitions: int = 100
    max_measure_s: float = 300
    idle_power_s: float = 1           # interference and throttling (interference.py)
    interference_cpu_cores: float = 0.5
    noisy_half_width_rel: float = 0.1
    on_interference: str = "record"

    def __post_init__(self):
        """The same bounds as the configuration schema (bounds.py), so the CLI's `run` and `bench` accept
        what a config accepts and nothing else."""
        check_name(self.model)
        check_name(self.prompt_set, "prompt set name")
        if self.engine not in ENGINES:
            raise ValueError(f"engine: unknown engine {self.engine!r} (available: {', '.join(ENGINES)})")
        bounds.check("$defs.batch_size", self.batch_size, "batch_size")
        for key in ("max_new_tokens", "repetitions", "warmup", "seed", "telemetry_interval_s", "dtype",
                    *TRUST_KEYS):
            bounds.check(f"benchmark.{key}", getattr(self, key), key)
        check_device(self.device)
        if "file" in self.prompt_spec:
            bounds.check("$defs.prompt_limit", self.prompt_spec.get("limit", 1), "prompt limit")
        else:
            bounds.check("$defs.prompt_tokens", self.prompt_spec.get("tokens"), "prompt tokens")
            bounds.check("$defs.prompt_count", self.prompt_spec.get("count", 1), "prompt count")
        check_options(self.engine, self.engine_options)
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights: {self.weights!r} is not one of {', '.join(WEIGHTS)}")
        if not isinstance(self.trust_remote_code, bool):
            raise ValueError(f"trust_remote_code: {self.trust_remote_code!r} is not a boolean")



def engine_settings(spec: BenchSpec, device: str, dtype: str, max_input_len: int,
                    record_token_times: bool | None = None) -> EngineSettings:
    """The one place a target's spec becomes an engine's settings (benchmark, reference and build jobs)."""
    return EngineSettings(
        model_dir=Path(spec.model_dir), device=device, dtype=dtype, max_batch_size=spec.batch_size,
        max_input_len=max_input_len, max_new_tokens=spec.max_new_tokens, seed=spec.seed,
        record_token_times=spec.record_token_times if record_token_times is None else record_token_times,
        options=spec.engine_options, artifact_dir=Path(spec.artifact_dir) if spec.artifact_dir else None,
        trust_remote_code=spec.trust_remote_code, gpus=spec.gpus, weights=spec.weights)


def shape_settings(model_dir, engine: str, batch_size: int, prompt_len: int, max_new_tokens: int, device: str,
                   dtype: str, options: dict | None = None, artifact_dir=None, seed: int = 0,
                   trust_remote_code: bool = False, weights: str = "default") -> EngineSettings:
    """An engine's settings for one shape outside a benchmark target (a build's compile step, the GPU
    checks, the profiler), through BenchSpec's checks and the one constructor above."""
    spec = BenchSpec(model="shape", model_dir=str(model_dir), engine=engine, prompt_set="shape",
                     prompt_spec={"tokens": prompt_len, "count": 1}, batch_size=batch_size,
                     max_new_tokens=max_new_tokens, seed=seed, device=device, dtype=dtype,
                     engine_options=options or {}, artifact_dir=str(artifact_dir) if artifact_dir else None,
                     trust_remote_code=trust_remote_code, weights=weights)
    return engine_settings(spec, device, dtype, prompt_len)


@dataclass
class ServeSpec(_FromJson):
    """One serving target: a model behind a server (servers.py) under one load point (scenarios/serving.py).
    Built by plan.py from the config's `servers`, `serving` and `benchmark` keys."""
    model: str
    model_dir: str                    # the model's directory: the tokenizer, and what a local server loads
    server: str
    server_entry: dict                # the config's servers.<name>
    prompt_set: str
    prompt_spec: dict
    load: str                         # cN or rX
    max_new_tokens: int
    requests: int = 16
    min_duration_s: float = 0
    ci_target_rel: float = 0          # the stopping rule (scenarios/serving.py: stopping)
    max_requests: int = 100000
    max_duration_s: float = 600
    warmup_requests: int = 2
    burstiness: float = 1.0
    request_timeout_s: float = 600
    slo: dict = field(default_factory=dict)   # goodput objectives: {ttft_s, tpot_s}
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    telemetry_interval_s: float = 0.05
    strict: bool = False
    refuse_busy_gpu: bool = False
    trust_remote_code: bool = False
    idle_power_s: float = 1
    interference_cpu_cores: float = 0.5
    noisy_half_width_rel: float = 0.1
    on_interference: str = "record"

    @property
    def stream_unit(self) -> str:
        return self.server_entry.get("stream_unit", "token")

    def __post_init__(self):
        from inference_optim_llm.scenarios.serving import Load
        from inference_optim_llm.servers import ServerEntry

        check_name(self.model)
        check_name(self.server, "server name")
        check_name(self.prompt_set, "prompt set name")
        ServerEntry.from_config(self.server, self.server_entry)
        Load.parse(self.load)
        for key in ("max_new_tokens", "seed", "telemetry_interval_s", "dtype", *INTERFERENCE_KEYS):
            bounds.check(f"benchmark.{key}", getattr(self, key), key)
        for key in ("requests", "min_duration_s", "ci_target_rel", "max_requests", "max_duration_s", "warmup_requests",
                    "burstiness", "request_timeout_s", "slo"):
            bounds.check(f"serving.{key}", getattr(self, key), key)
        check_device(self.device)
