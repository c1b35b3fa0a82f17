"""Consistent probability sampling: the specification's threshold table, tracestate handling, and
head decisions that are the same for every span of a trace, in every process."""

import random
import subprocess
import sys

import pytest

from streams.otlp.batch import ColumnBatch
from streams.stages.sampling import (
    HeadRates, HeadSampler, SamplingError, adjusted_count, parse_ot, probability_to_threshold, th_to_threshold,
    threshold_probability, threshold_to_th, trace_randomness, with_th,
)

# "TraceState: Probability Sampling", table of 1-in-N probabilities at the default precision 4
SPEC_TABLE = [(1, "0"), (0.5, "8"), (1 / 3, "aaab"), (0.25, "c"), (0.2, "cccd"), (0.125, "e"), (0.1, "e666"),
              (0.0625, "f"), (0.01, "fd70a"), (0.001, "ffbe77"), (0.0001, "fff9724"), (0.00001, "ffff583a"),
              (0.000001, "ffffef39")]


@pytest.mark.parametrize("probability,th", SPEC_TABLE)
def test_thresholds_match_the_specification(probability, th):
    assert threshold_to_th(probability_to_threshold(probability)) == th
    assert threshold_to_th(th_to_threshold(th)) == th


def test_precision_and_adjusted_counts_from_the_specification():
    assert [threshold_to_th(probability_to_threshold(0.01, p)) for p in (3, 4, 5)] == ["fd71", "fd70a", "fd70a4"]
    assert threshold_probability(th_to_threshold("fd70a")) == pytest.approx(0.010000228881835938, rel=1e-12)
    assert adjusted_count(th_to_threshold("aaab")) == pytest.approx(3.00004577706569, rel=1e-12)
    assert adjusted_count(th_to_threshold("c")) == 4
    assert th_to_threshold("fd70a4") == 0xfd70a400000000  # the specification's 1% example
    for bad in ("", "g", "123456789012345", "ABC"):
        with pytest.raises(SamplingError):
            th_to_threshold(bad)
    with pytest.raises(SamplingError):
        probability_to_threshold(0)


def test_tracestate_ot_member():
    state = "vendor=abc,ot=rv:0123456789abcd;x:1,other=2"
    assert parse_ot(state) == {"rv": "0123456789abcd", "x": "1"}
    assert with_th(state, "c") == "ot=th:c;rv:0123456789abcd;x:1,vendor=abc,other=2"
    assert with_th("", "8") == "ot=th:8"
    assert trace_randomness("0" * 18 + "ffffffffffffff") == (1 << 56) - 1
    assert trace_randomness("f" * 32, "00000000000001") == 1


def spans(trace_ids, services=None, states=None):
    n = len(trace_ids)
    return ColumnBatch("otel_traces", {"TraceId": list(trace_ids), "ServiceName": services or ["api"] * n,
                                       "TraceState": states or [""] * n, "SpanId": [f"{i:016x}" for i in range(n)]})


def random_trace_ids(n, seed=1):
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(n)]


def test_head_decisions_are_per_trace_and_weights_are_adjusted_counts():
    ids = random_trace_ids(20_000)
    sampler = HeadSampler(HeadRates(0.25))
    out, counts = sampler.apply(spans(ids + ids))  # every trace twice: both spans get one decision
    kept = out.columns["TraceId"]
    assert len(kept) % 2 == 0 and sorted(kept[: len(kept) // 2]) == sorted(kept[len(kept) // 2:])
    assert 0.23 < len(kept) / (2 * len(ids)) < 0.27
    assert set(out.columns["SampleWeight"]) == {4.0}
    assert all(s == "ot=th:c" for s in out.columns["TraceState"])
    assert counts[("sampling", "head_dropped_span")] == 2 * len(ids) - len(kept)
    # the estimate of the true count from the weights
    assert sum(out.columns["SampleWeight"]) == pytest.approx(2 * len(ids), rel=0.05)


def test_lower_rates_keep_a_subset_and_upstream_thresholds_are_respected():
    ids = random_trace_ids(5000, seed=2)
    half = set(HeadSampler(HeadRates(0.5)).apply(spans(ids))[0].columns["TraceId"])
    tenth = set(HeadSampler(HeadRates(0.1)).apply(spans(ids))[0].columns["TraceId"])
    assert tenth < half  # consistent: kept at 10% implies kept at 50%
    # a span already sampled upstream at 1/16 (th:f) keeps its threshold and weight under our 50%
    upstream = [i for i in ids if trace_randomness(i) >= th_to_threshold("f")]
    out, _ = HeadSampler(HeadRates(0.5)).apply(spans(upstream, states=["ot=th:f"] * len(upstream)))
    assert len(out) == len(upstream) and set(out.columns["SampleWeight"]) == {16.0}
    assert set(out.columns["TraceState"]) == {"ot=th:f"}
    # an explicit rv wins over the trace id
    out, _ = HeadSampler(HeadRates(0.5)).apply(spans(["f" * 32], states=["ot=rv:00000000000001"]))
    assert len(out) == 0


def test_per_service_rates_and_rates_off():
    ids = random_trace_ids(4000, seed=3)
    sampler = HeadSampler(HeadRates(1.0, {"noisy": 0.1}))
    out, _ = sampler.apply(spans(ids, services=["noisy"] * 2000 + ["quiet"] * 2000))
    services = out.columns["ServiceName"]
    assert services.count("quiet") == 2000 and 150 < services.count("noisy") < 250
    batch = spans(ids[:10])
    assert HeadSampler(HeadRates()).apply(batch)[0] is batch  # nothing sampled anywhere: untouched


def test_logs_follow_their_traces_except_warnings_and_logs_without_trace():
    ids = random_trace_ids(3000, seed=4)
    sampler = HeadSampler(HeadRates(0.2))
    kept_traces = set(sampler.apply(spans(ids))[0].columns["TraceId"])
    logs = ColumnBatch("otel_logs", {"TraceId": ids + ids + [""], "ServiceName": ["api"] * (2 * len(ids) + 1),
                                     "SeverityNumber": [9] * len(ids) + [17] * len(ids) + [9]})
    out, counts = sampler.apply(logs)
    infos = [t for t, sev in zip(out.columns["TraceId"], out.columns["SeverityNumber"]) if sev == 9 and t]
    assert set(infos) == kept_traces  # INFO logs exactly of the kept traces
    assert sum(1 for s in out.columns["SeverityNumber"] if s == 17) == len(ids)  # every ERROR kept
    assert "" in out.columns["TraceId"]
    assert counts[("sampling", "head_dropped_log")] == len(ids) - len(kept_traces)


def test_decisions_are_the_same_in_another_process():
    ids = random_trace_ids(2000, seed=5)
    here = HeadSampler(HeadRates(0.3)).apply(spans(ids))[0].columns["TraceId"]
    code = ("import random, sys; from streams.stages.sampling import HeadRates, HeadSampler; "
            "from tests.unit.streams.stages.test_sampling import random_trace_ids, spans; "
            "print(','.join(HeadSampler(HeadRates(0.3)).apply(spans(random_trace_ids(2000, seed=5)))[0].columns['TraceId']))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=".").stdout.strip().split(",")
    assert there == here


def test_a_producers_th_never_weighs_more_than_the_floor_rate_allows():
    from streams.stages.sampling import DEFAULT_MIN_RATE

    ids = random_trace_ids(50, seed=3)
    out, counts = HeadSampler(HeadRates(0.5)).apply(spans(ids, states=["ot=th:ffffffffffffff"] * len(ids)))
    assert out.columns["SampleWeight"] and max(out.columns["SampleWeight"]) == 1 / DEFAULT_MIN_RATE
    assert counts[("sampling", "upstream_weight_capped")] == len(out.columns["SampleWeight"])
    out, counts = HeadSampler(HeadRates(0.5, floor=2**-56)).apply(spans(ids[:1], states=["ot=th:ffffffffffffff"]))
    assert out.columns["SampleWeight"][0] > 7e16 and not counts  # a floor of 2^-56 trusts it


def test_rates_below_the_floor_are_refused_everywhere():
    import pytest

    from streams.config import ConfigError, load_settings
    from streams.stages.sampling import SamplingError, rate_from_record

    with pytest.raises(SamplingError, match="below the floor"):
        HeadRates(2**-56)
    with pytest.raises(SamplingError, match="below the floor"):
        rate_from_record("checkout", str(2**-56).encode())
    assert rate_from_record("checkout", b"0.01") == 0.01
    with pytest.raises(ConfigError) as err:
        load_settings(env={"OTELPIPE_SAMPLING_HEAD_RATE": "1e-9", "OTELPIPE_SAMPLING_SERVICE_RATES": "a=1e-12"})
    assert any(p.startswith("sampling.head_rate: 1e-09 is below sampling.min_rate") for p in err.value.problems)
    assert any(p.startswith("sampling.service_rates: a=1e-12 is below") for p in err.value.problems)
    assert load_settings(env={"OTELPIPE_SAMPLING_HEAD_RATE": "1e-9", "OTELPIPE_SAMPLING_MIN_RATE": "1e-9"})
