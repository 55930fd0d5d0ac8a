"""A workflow job that fails for a stated reason (a server that did not start, a failed request, a token count
other than asked, an interfered cell) ends with its message alone in the rule's log: one line, no traceback."""
import subprocess
import sys
import textwrap

import pytest

FAILURES = {
    "ServerStartError": "from inference_optim_llm.servers import ServerStartError as E",
    "RequestFailed": "from inference_optim_llm.scenarios.serving import RequestFailed as E",
    "TokenCountError": "from inference_optim_llm.metrics import TokenCountError as E",
    "InterferenceError": "from inference_optim_llm.interference import InterferenceError as E",
}


@pytest.mark.parametrize("name", FAILURES)
def test_a_job_that_fails_for_a_stated_reason_logs_one_line(tmp_path, name):
    log = tmp_path / "job.log"
    script = textwrap.dedent(f"""
        from types import SimpleNamespace
        from inference_optim_llm.stages import job
        {FAILURES[name]}
        snakemake = SimpleNamespace(log=[{str(log)!r}], output=[{str(tmp_path / 'out.json')!r}])
        with job(snakemake):
            raise E("the reason, said once")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    text = log.read_text()
    assert "Traceback" not in text and text.endswith("\nerror: the reason, said once\n"), text
    assert text.count("the reason") == 1, text
