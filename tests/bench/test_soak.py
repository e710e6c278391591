"""bench.soak's own arithmetic: warm-up, probe figures, the per-process summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.soak import Samples, probe_figures, summarise, warmup_seconds


def test_the_warm_up_is_ten_minutes_or_a_third_of_a_shorter_offer():
    """--warmup-min wins; else 10 minutes, or a third of an offer shorter than 30 minutes."""
    assert warmup_seconds(argparse.Namespace(minutes=50, warmup_min=None)) == 600
    assert warmup_seconds(argparse.Namespace(minutes=15, warmup_min=None)) == 300
    assert warmup_seconds(argparse.Namespace(minutes=50, warmup_min=5)) == 300


def test_probe_figures_are_flattened_to_mib(tmp_path: Path):
    """The block cache (with its roles), memtables and table readers summed over stores, malloc
    and Python figures come out in MiB or as counts; a process without a file gives nothing."""
    mib = 1 << 20
    (tmp_path / "42.json").write_text(json.dumps({
        "rocksdb": {"cache": {"usage": 10 * mib, "pinned": 4 * mib,
                              "roles": {"DataBlock": 6 * mib, "WriteBuffer": 4 * mib}},
                    "stores": {"a": {"open": 2, "memtables": mib, "table_readers": mib},
                               "b": {"open": 1, "memtables": 2 * mib, "table_readers": 0}}},
        "malloc": {"in_use": 30 * mib, "free": 5 * mib, "arenas": 2},
        "python": {"pymalloc_blocks": 5000, "threads": 3}}))
    figures = probe_figures(tmp_path, 42)
    assert figures["cache"] == 10 and figures["c_data"] == 6 and figures["c_wbuf"] == 4
    assert figures["memtab"] == 3 and figures["readers"] == 1 and figures["dbs"] == 3
    assert figures["malloc_used"] == 30 and figures["malloc_free"] == 5
    assert figures["arenas"] == 2 and figures["pyblocks_k"] == 5 and figures["threads"] == 3
    assert probe_figures(tmp_path, 43) == {}
    assert probe_figures(None, 42) == {}


def test_the_summary_compares_the_first_sample_after_warm_up_with_the_last():
    """RSS, anonymous RSS and probe figures at warm-up end and offer end; the change in %."""
    samples = Samples(rate=10)
    for t, kib in ((0, 1024), (60, 2048), (120, 2048 + 102)):
        samples.rows.append((t, 10 * t, {"w": kib}))
        samples.cpu.append({"w": t / 100})
        samples.anon.append({"w": kib // 2})
        samples.probes.append({"w": {"cache": t / 60}})
    out = summarise(samples, warmup_s=60, offered_until=120)["w"]
    assert (out["rss_warm_mib"], out["rss_end_mib"], out["change_pct"]) == (2.0, 2.1, 5.0)
    assert (out["anon_warm_mib"], out["anon_end_mib"]) == (1.0, 1.0)
    assert (out["probe_warm"]["cache"], out["probe_end"]["cache"]) == (1.0, 2.0)


def test_the_median_change_ignores_where_single_samples_fall_in_a_trim_cycle():
    """A sawtooth (freed memory returned every cycle) compares flat by window medians, though
    its last sample sits at a peak; a real rise still shows."""
    samples = Samples(rate=10)
    for t in range(0, 3_600, 60):
        saw = 100_000 + (10_000 if (t // 60) % 4 == 3 else 0)  # a peak every 4th sample
        samples.rows.append((t, 10 * t, {"flat": saw, "rising": 100_000 + 10 * t}))
        samples.cpu.append({"flat": 0.0, "rising": 0.0})
        samples.anon.append({})
        samples.probes.append({})
    out = summarise(samples, warmup_s=600, offered_until=3_540)
    assert out["flat"]["change_pct"] > 5  # the last sample is a peak
    assert out["flat"]["change_median_pct"] == 0.0
    assert out["rising"]["change_median_pct"] > 20
