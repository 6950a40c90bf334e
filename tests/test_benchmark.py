"""The benchmark runs end to end on tiny nets (fresh processes, interleaving, summary, files, CLI); no timings."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import typer
from typer.testing import CliRunner

from localai_sd import benchmark
from localai_sd.cli.benchmark import register


def test_interleaved_specs_alternate_contenders() -> None:
    specs = list(benchmark.interleaved_specs([256], [0, 1], steps=3, repeats=2))
    assert [(s.contender, s.mode) for s in specs] == [
        ("ours", 0), ("localai", 0), ("ours", 0), ("localai", 0),
        ("ours", 1), ("localai", 1), ("ours", 1), ("localai", 1),
    ]  # fmt: skip
    assert all(s.steps == 3 and s.size == 256 for s in specs)


def _result(contender: str, request_s: float, rss: float = 1.0) -> benchmark.TrialResult:
    spec = benchmark.TrialSpec(contender, 256, 1, 15)
    return benchmark.TrialResult(spec, 1.0, 0.1, 0.5, 0.2, request_s, request_s * 0.9, rss)


def test_summary_takes_min_and_median_and_ratio() -> None:
    results = [
        _result("ours", 10.0),
        _result("localai", 40.0),
        _result("ours", 14.0),
        _result("localai", 20.0),
    ]
    results.append(_result("ours", 11.0))
    summaries = benchmark.summarize(results)
    ours = next(s for s in summaries if s.contender == "ours")
    assert ours.runs == 3
    assert ours.metrics["request_s"] == (10.0, 11.0)
    assert benchmark.ratio(summaries, 256, 1) == pytest.approx((10.0 / 20.0, 11.0 / 30.0))
    assert benchmark.ratio(summaries, 512, 1) is None
    table = benchmark.markdown_table(summaries)
    assert "| 256 | 1 | ours | 3 |" in table and "0.50 / 0.37" in table


def test_outside_ncnn_excludes_localai_load() -> None:
    ours = _result("ours", 10.0)
    assert ours.outside_ncnn == pytest.approx(0.1)
    ref = benchmark.TrialResult(benchmark.TrialSpec("localai", 256, 1, 15), 4.0, 0, 0, 0, 10.0, 5.4, 1.0)
    assert ref.outside_ncnn == pytest.approx(0.1)


def test_unknown_contender_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="contender 'torch' is unknown"):
        benchmark.run_trial(benchmark.Target(str(tmp_path)), benchmark.TrialSpec("torch", 256, 0, 1))


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from localai_sd.testing.tiny import build_tiny_assets

    dest = tmp_path_factory.mktemp("bench-tiny")
    build_tiny_assets(dest)
    return dest


def test_both_contenders_run_in_fresh_processes(tiny_assets: Path, tmp_path: Path) -> None:
    target = benchmark.Target(str(tiny_assets), threads=1)
    seen: list[benchmark.TrialResult] = []
    results = benchmark.run_benchmark(
        target, sizes=[256], modes=[1], steps=2, repeats=1, on_result=seen.append
    )
    assert [r.spec.contender for r in results] == ["ours", "localai"] and seen == results
    for r in results:
        assert r.request_s > 0 and r.step_s > 0 and r.decode_s > 0 and r.ncnn_s > 0
        assert 0 < r.peak_rss_gb < 4 and 0 <= r.outside_ncnn < 1
    # LocalAI's load happens inside its request; ours was loaded before the request started.
    assert results[1].request_s > results[1].load_s
    summaries = benchmark.summarize(results)
    doc = benchmark.results_document(target, results, summaries)
    json_path, md_path = benchmark.write_results(tmp_path, "quick", doc, benchmark.markdown_table(summaries))
    data = json.loads(json_path.read_text())
    assert len(data["trials"]) == 2 and data["machine"]["cpus"] >= 1
    assert not data["target"]["asset_dir"].startswith("/"), "no machine paths in shared results"
    assert "| 256 | 1 | localai | 1 |" in md_path.read_text()


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    app.command("noop", hidden=True)(lambda: None)  # keeps typer in multi-command mode
    return app


def test_cli_quick_on_tiny_assets(tiny_assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = CliRunner().invoke(
        _cli(), ["benchmark", "--assets", str(tiny_assets), "--quick", "--compare", "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "s/step" in result.output and "| 256 | 1 | ours | 1 |" in result.output
    assert len(list(out.glob("*.json"))) == 1 and len(list(out.glob("*.md"))) == 1


def test_cli_installed_model(tiny_models: Path) -> None:
    result = CliRunner().invoke(
        _cli(), ["benchmark", "--model", "stablediffusion", "--models-path", str(tiny_models), "--quick"]
    )
    assert result.exit_code == 0, result.output
    assert "| 256 | 1 | ours | 1 |" in result.output and "localai" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --model NAME or --assets DIR"),
        (["--assets", "nowhere-at-all"], "is not a directory"),
        (["--assets", ".", "--mode", "2"], "--mode 2 must be 0"),
        (["--assets", ".", "--size", "100"], "--size 100 must be a positive multiple of 64"),
    ],
)
def test_cli_bad_input_is_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(_cli(), ["benchmark", *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_release_memory_keeps_nets_usable(tiny_assets: Path) -> None:
    """The pools freed between phases (peak-memory optimisation) are re-allocated with identical results."""
    import numpy as np

    from localai_sd.pipeline.assets import AssetSet
    from localai_sd.pipeline.netset import load_unet

    unet = load_unet(AssetSet.from_dir(tiny_assets), 256, 256, mode=1, threads=1)
    latent = np.random.default_rng(0).standard_normal(unet.latent_shape, dtype=np.float32)
    cond = np.zeros((77, 768), dtype=np.float32)
    before = unet(latent, 500.0, cond, 0.1, -3.0)
    unet.release_memory()
    after = unet(latent, 500.0, cond, 0.1, -3.0)
    np.testing.assert_array_equal(before, after)
    unet.close()


def test_low_memory_pipeline_releases_and_reloads(tiny_assets: Path) -> None:
    """The low-memory setting closes the text encoder and decoder after use and reloads them next request."""
    from localai_sd.pipeline.pipeline import StableDiffusion
    from localai_sd.pipeline.request import GenerationRequest

    sd = StableDiffusion.from_dir(tiny_assets, threads=1, low_memory=True)
    request = GenerationRequest.create("a cat | blurry", size="256x256", steps=2, seed=3)
    first = sd.generate(request)
    assert sd.nets.resident == ["unet"]
    second = sd.generate(request)
    assert [i.png for i in first] == [i.png for i in second]
    assert sd.timings.ncnn > 0 and sd.timings.ncnn <= sd.timings.total
    assert sd.decoder(256, 256).options.winograd is False  # plain-conv decoder: no winograd workspace
    sd.close()


def test_trials_report_progress_per_phase_and_step(tiny_assets: Path) -> None:
    """Each trial's fresh process reports load, encode, every sampling step and decode as they happen."""
    target = benchmark.Target(str(tiny_assets), threads=1)
    events: list[tuple[int, int, str, str, int, int]] = []
    benchmark.run_benchmark(
        target,
        sizes=[64],
        modes=[1],
        steps=3,
        repeats=1,
        on_progress=lambda n, total, spec, phase, step, steps: events.append(
            (n, total, spec.contender, phase, step, steps)
        ),
    )
    for number, contender in ((1, "ours"), (2, "localai")):
        mine = [e[3:] for e in events if e[0] == number and e[2] == contender]
        assert mine[0] == ("load", 0, 3)
        assert [e for e in mine if e[0] == "sample"] == [("sample", 1, 3), ("sample", 2, 3), ("sample", 3, 3)]
    assert {e[1] for e in events} == {2}


def test_a_trial_that_fails_is_reported_not_hung(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the ours trial failed"):
        benchmark.run_isolated(benchmark.Target(str(tmp_path)), benchmark.TrialSpec("ours", 64, 1, 1))


def test_benchmark_low_memory_target(tiny_assets: Path) -> None:
    target = benchmark.Target(str(tiny_assets), threads=1, low_memory=True)
    (result,) = benchmark.run_benchmark(
        target, sizes=[256], modes=[0], steps=1, repeats=1, contenders=(benchmark.OURS,)
    )
    assert result.request_s > 0 and result.ncnn_s > 0


def _peers_module() -> ModuleType:
    """benchmarks/peers.py loaded by path (it is a script, not a package module)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
    spec = importlib.util.spec_from_file_location("peers_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peers_script_times_our_step_and_writes_results(tiny_assets: Path, tmp_path: Path) -> None:
    """benchmarks/peers.py with only the ncnn engine: a fresh process per round, JSON and table written."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"
    command = [sys.executable, str(script), "--assets", str(tiny_assets), "--size", "64", "--engines", "ncnn"]
    command += ["--runs", "2", "--rounds", "2", "--results", str(tmp_path), "--stem", "t"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "peers-t.json").read_text())
    (row,) = document["rows"]
    assert row["engine"] == "ncnn" and 0 < row["min_step_s"] <= row["median_step_s"]
    assert [len(r["times"]) for r in document["results"]["ncnn"]] == [2, 2]
    assert "| ncnn |" in (tmp_path / "peers-t.md").read_text()


def test_peers_skip_engines_that_are_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    peers = _peers_module()
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import now raises ImportError
    assert peers.available("onnxruntime") == "onnxruntime: skipped, 'onnxruntime' is not installed"
    assert peers.available("ncnn") is None
    assert peers.per_step("torch-bf16", 1.5) == 3.0 and peers.per_step("torch-bf16-b2", 1.5) == 1.5


def test_cpu_description_reads_model_and_isa() -> None:
    cpuinfo = (
        "processor\t: 0\nmodel name\t: AMD EPYC 9004\nflags\t\t: fpu avx2 fma f16c avx512f avx512_bf16\n\n"
        "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n"
    )
    assert benchmark.cpu_description(cpuinfo) == {
        "cpu": "AMD EPYC 9004",
        "isa": ["avx2", "fma", "f16c", "avx512f", "avx512_bf16"],
    }
    assert benchmark.cpu_description("") == {"cpu": "unknown", "isa": []}
