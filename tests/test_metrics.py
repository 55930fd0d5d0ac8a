"""From token timestamps to TTFT, TPOT, latency and throughput; token-count and agreement checks."""
from __future__ import annotations

import math

import pytest

from inference_optim_llm.metrics import (RequestTiming, TokenCountError, aggregate, check_token_counts,
                                         request_timing, token_agreement)


# -- request_timing -----------------------------------------------------------------------------------

def test_request_timing_from_token_stamps():
    rt = request_timing([0.10, 0.15, 0.20, 0.25], output_tokens=4, batch_e2e_s=0.30)
    assert isinstance(rt, RequestTiming)
    assert rt.ttft_s == pytest.approx(0.10)                     # first stamp
    assert rt.tpot_s == pytest.approx((0.25 - 0.10) / 3)        # (last - first) / (n - 1) = 0.05
    assert rt.e2e_s == pytest.approx(0.25)                      # last stamp, not the batch's time
    assert rt.output_tokens == 4
    assert rt.tps == pytest.approx(4 / 0.25)                    # 16 tokens/s


def test_request_timing_uneven_stamps_uses_mean_gap():
    rt = request_timing([0.5, 0.6, 1.0], output_tokens=3, batch_e2e_s=1.2)
    assert rt.ttft_s == pytest.approx(0.5)
    assert rt.tpot_s == pytest.approx(0.25)      # (1.0 - 0.5) / 2
    assert rt.e2e_s == pytest.approx(1.0)
    assert rt.tps == pytest.approx(3.0)


def test_request_timing_one_token_has_no_tpot():
    rt = request_timing([0.3], output_tokens=1, batch_e2e_s=0.5)
    assert rt.ttft_s == pytest.approx(0.3)
    assert rt.tpot_s is None
    assert rt.e2e_s == pytest.approx(0.3)
    assert rt.tps == pytest.approx(1 / 0.3)


def test_request_timing_without_stamps_uses_batch_time():
    rt = request_timing([], output_tokens=8, batch_e2e_s=2.0)
    assert rt.ttft_s is None
    assert rt.tpot_s is None
    assert rt.e2e_s == pytest.approx(2.0)
    assert rt.output_tokens == 8
    assert rt.tps == pytest.approx(4.0)


@pytest.mark.parametrize("stamps, n", [([0.1, 0.2], 3), ([0.1, 0.2, 0.3, 0.4], 3)])
def test_request_timing_stamp_count_mismatch_raises(stamps, n):
    with pytest.raises(ValueError, match=f"{len(stamps)} timestamps for {n} tokens"):
        request_timing(stamps, output_tokens=n, batch_e2e_s=1.0)


# -- check_token_counts -------------------------------------------------------------------------------

def test_check_token_counts_exact_passes():
    assert check_token_counts([[1, 2, 3, 4], [5, 6, 7, 8]], 4) is None


def test_check_token_counts_short_request_raises_naming_it():
    with pytest.raises(TokenCountError) as e:
        check_token_counts([[1, 2, 3, 4], [5, 6, 7], [1, 1, 1, 1]], 4)
    msg = str(e.value)
    assert "request 1: 3" in msg          # index and generated count
    assert "exactly 4" in msg             # requested count
    assert "request 0" not in msg and "request 2" not in msg


def test_check_token_counts_long_request_raises_naming_it():
    with pytest.raises(TokenCountError) as e:
        check_token_counts([[1, 2, 3, 4, 5], [5, 6, 7, 8]], 4)
    assert "request 0: 5" in str(e.value)
    assert "exactly 4" in str(e.value)
    assert "1 request(s)" in str(e.value)


def test_check_token_counts_reports_every_bad_request():
    with pytest.raises(TokenCountError) as e:
        check_token_counts([[1], [1, 2], [1, 2, 3]], 2)
    assert "2 request(s)" in str(e.value)
    assert "request 0: 1" in str(e.value) and "request 2: 3" in str(e.value)


# -- token_agreement ----------------------------------------------------------------------------------

def test_token_agreement_all_equal():
    ref = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    a = token_agreement([list(r) for r in ref], ref)
    assert a["exact_match_rate"] == 1.0
    assert a["first_divergence"] is None
    assert a["first_divergence_per_prompt"] == [None, None]


def test_token_agreement_one_differs_at_position_3():
    ref = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15], [1, 1, 1, 1, 1]]
    out = [[1, 2, 3, 4, 5], [6, 7, 8, 0, 10], [11, 12, 13, 14, 15], [1, 1, 1, 1, 1]]
    a = token_agreement(out, ref)
    assert a["exact_match_rate"] == pytest.approx(3 / 4)
    assert a["first_divergence"] == 3
    assert a["first_divergence_per_prompt"] == [None, 3, None, None]


def test_token_agreement_first_divergence_is_the_minimum():
    ref = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    out = [[1, 2, 3, 4, 0], [6, 0, 8, 9, 10]]
    a = token_agreement(out, ref)
    assert a["exact_match_rate"] == 0.0
    assert a["first_divergence"] == 1
    assert a["first_divergence_per_prompt"] == [4, 1]


def test_token_agreement_different_lengths_part_at_the_shorter_end():
    ref = [[1, 2, 3, 4, 5], [6, 7, 8]]
    out = [[1, 2, 3], [6, 7, 8, 9]]       # a prefix of the reference, and one token too many
    a = token_agreement(out, ref)
    assert a["exact_match_rate"] == 0.0
    assert a["first_divergence_per_prompt"] == [3, 3]
    assert a["first_divergence"] == 3


def test_token_agreement_prompt_count_mismatch_raises():
    with pytest.raises(ValueError):
        token_agreement([[1, 2]], [[1, 2], [3, 4]])


# -- aggregate ----------------------------------------------------------------------------------------

def test_aggregate_throughput_from_batches_and_latency_from_requests():
    requests = [
        {"ttft_s": 0.10, "tpot_s": 0.02, "e2e_s": 1.0, "tps": 10.0},
        {"ttft_s": 0.30, "tpot_s": 0.04, "e2e_s": 2.0, "tps": 5.0},
        {"ttft_s": 0.20, "tpot_s": 0.03, "e2e_s": 3.0, "tps": 4.0},
    ]
    batches = [
        {"output_tokens_per_s": 100.0, "requests_per_s": 2.0},
        {"output_tokens_per_s": 300.0, "requests_per_s": 6.0},
        {"output_tokens_per_s": 200.0, "requests_per_s": 4.0},
        {"output_tokens_per_s": 400.0, "requests_per_s": 8.0},
    ]
    m = aggregate(requests, batches)
    assert set(m) == {"ttft_s", "tpot_s", "e2e_s", "request_tokens_per_s", "output_tokens_per_s", "requests_per_s"}
    # per batch: 4 values, not the requests' tps
    assert m["output_tokens_per_s"]["n"] == 4
    assert m["output_tokens_per_s"]["median"] == pytest.approx(250.0)
    assert m["output_tokens_per_s"]["mean"] == pytest.approx(250.0)
    assert m["output_tokens_per_s"]["min"] == 100.0 and m["output_tokens_per_s"]["max"] == 400.0
    assert m["requests_per_s"]["median"] == pytest.approx(5.0)
    # per request
    assert m["ttft_s"]["n"] == 3
    assert m["ttft_s"]["median"] == pytest.approx(0.20)
    assert m["tpot_s"]["median"] == pytest.approx(0.03)
    assert m["e2e_s"]["median"] == pytest.approx(2.0)
    assert m["e2e_s"]["max"] == pytest.approx(3.0)
    assert m["request_tokens_per_s"]["median"] == pytest.approx(5.0)
    assert m["request_tokens_per_s"]["n"] == 3


def test_aggregate_with_timing_off_gives_none_ttft_not_zero():
    # request_timing with no stamps -> ttft/tpot None; aggregate must not count them as 0
    rts = [request_timing([], 8, 2.0), request_timing([], 8, 4.0)]
    requests = [{**vars(rt)} for rt in rts]
    batches = [{"output_tokens_per_s": 8.0, "requests_per_s": 1.0}]
    m = aggregate(requests, batches)
    assert m["ttft_s"]["n"] == 0 and m["ttft_s"]["median"] is None
    assert m["tpot_s"]["n"] == 0 and m["tpot_s"]["mean"] is None
    assert m["e2e_s"]["n"] == 2 and m["e2e_s"]["median"] == pytest.approx(3.0)
    assert m["request_tokens_per_s"]["median"] == pytest.approx(3.0)   # 8/2 = 4, 8/4 = 2


def test_aggregate_one_token_requests_have_no_tpot():
    rt = request_timing([0.2], 1, 0.3)
    m = aggregate([vars(rt)], [{"output_tokens_per_s": 1 / 0.3, "requests_per_s": 1 / 0.3}])
    assert m["tpot_s"]["n"] == 0 and m["tpot_s"]["median"] is None
    assert m["ttft_s"]["median"] == pytest.approx(0.2)
    assert not math.isnan(m["output_tokens_per_s"]["median"])


def test_fraction_of_the_datasheet_bandwidth():
    from inference_optim_llm.bandwidth import datasheet_bandwidth, decode_bandwidth

    assert datasheet_bandwidth("NVIDIA H200") == (4800.0, None)
    assert datasheet_bandwidth("NVIDIA Foo 9000")[0] is None and "not in the datasheet table" in datasheet_bandwidth("NVIDIA Foo 9000")[1]
    model = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
             "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256}
    bw = decode_bandwidth(model, "bfloat16", 1, 64, 64, 0.001, None, "NVIDIA H200")
    assert bw["fraction_of_datasheet"] == pytest.approx(bw["achieved_gb_s"] / 4800)
    assert decode_bandwidth(model, "bfloat16", 1, 64, 64, 0.001, None, "NVIDIA Foo 9000")["fraction_of_datasheet"] is None
