"""tools/: the fixture writer reproduces the reference weights' rule; the inspector reads headers only; the
benchmarks run on the tiny models (their timings are not tested)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from make_fixture_weights import fixture_tensor
from ldm.accel import memory
from ldm.load.safetensors_io import SafetensorsFile


def test_fixture_rule_categories():
    assert fixture_tensor("a.norm.weight", (64,), 1).sub(1).abs().max() < 0.5  # 1 + 0.05 N
    assert fixture_tensor("a.bias", (64,), 1).abs().max() < 0.2  # 0.02 N
    w = fixture_tensor("a.weight", (256, 64, 3, 3), 1)
    assert abs(w.std().item() - (64 * 9) ** -0.5) < 2e-3  # N / sqrt(fan_in)
    assert torch.equal(fixture_tensor("k", (3,), 7), fixture_tensor("k", (3,), 7))
    assert not torch.equal(fixture_tensor("k", (3,), 7), fixture_tensor("k", (3,), 8))


def test_regenerated_tiny_checkpoint_has_the_reference_layout(tiny_ckpt):
    st = SafetensorsFile(tiny_ckpt)
    assert len(st.keys()) == 988  # 686 UNet + 248 VAE + 42 text + 12 schedule buffers
    assert st.metadata["seed"] == "1234"


def test_inspect_checkpoint(tiny_dir):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "inspect_checkpoint.py"), str(tiny_dir / "tiny.safetensors")],
                         capture_output=True, text=True, check=True).stdout
    assert "detected    sd2" in out and "12 of 12 buffers" in out
    assert out.count("keys and shapes match") == 3  # the config beside the file is used
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "inspect_checkpoint.py"), str(ROOT / "setup.py")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and bad.stderr.count("\n") == 1


def test_the_run_benchmark_splits_a_run_into_its_phases(tiny_dir, tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tools" / "bench_run.py"), "--ckpt", str(tiny_dir / "tiny.safetensors"),
                    "--controlnet", str(tiny_dir / "controlnet.safetensors"), "--json", str(tmp_path / "run.json"),
                    "--", "--frames", "5", "--steps", "4", "--size", "64", "--inversion-steps", "2", "--candidates", "1",
                    "--dtype", "float32"], capture_output=True, text=True, check=True)
    (row,) = json.loads((tmp_path / "run.json").read_text())["results"]
    assert row["frames"] == 5 and row["size"] == [64, 64] and row["pose"] and row["inversion_steps"] == 2
    assert set(row["phases"]) == {"start-up", "inversion", "frames"}
    assert all(p["seconds"] > 0 and p["minor_faults"] >= 0 for p in row["phases"].values())
    networks = row["networks"]
    # textual inversion's forward passes record gradients; the frames' calls do not
    assert {"unet with gradients", "unet without gradients", "controlnet without gradients",
            "decoder without gradients"} <= set(networks)
    inside = sum(u["seconds"] for name, u in networks.items() if name.endswith("without gradients"))
    assert inside <= row["phases"]["frames"]["seconds"] + row["phases"]["inversion"]["seconds"]
    assert sum(c["calls"] for c in row["calls"]["unet"].values()) == row["unet_calls"] > 0
    assert sum(c["seconds"] for c in row["calls"]["decoder"].values()) == pytest.approx(
        networks["decoder without gradients"]["seconds"], abs=0.01)


def test_the_run_benchmark_refuses_compiled_networks(tiny_dir):
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_run.py"), "--ckpt", str(tiny_dir / "tiny.safetensors"),
                          "--", "--compile"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "tools/bench.py --compile" in bad.stderr


def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path):
    """tools/gpu_check.py --dry-run: every section at the tiny size, as it runs on a lent GPU at full size."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--dry-run", "--device", "cpu",
                           "--json", str(tmp_path / "gpu.json"), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True,
                          env={**os.environ, "SD_INTERP_CACHE": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    r = json.loads((tmp_path / "gpu.json").read_text())
    rows = {(x["network"], x["dtype"]): x for x in r["half_precision"]}
    assert set(rows) == {(n, d) for n in ("unet", "vae", "text", "controlnet", "clip") for d in ("float16", "bfloat16")}
    assert all(x["finite"] and 0 < x["relative"] < 0.1 for x in rows.values())  # random weights, so a loose bound
    assert r["eta_sampling"]["finite"] and r["inversion_float16"]["embeddings_moved"] and r["host_syncs"] is None
    assert [s["candidates"] for s in r["sequence"]] == ["1", "auto"] and all(s["seconds"] > 0 for s in r["sequence"])
    assert r["unet_steps"][0]["seconds"] > 0 and "| unet | float16 |" in done.stdout


def test_the_memory_plan_fits_the_default_run_on_a_12_gb_card(capsys):
    """tools/memory_plan.py: the full-size networks on meta tensors, the default 17-frame plan at 512 px."""
    import memory_plan
    r = memory_plan.main(["--size", "512", "--memory-gb", "12"])
    assert 1 <= r["unet_rows"] < 80 and 1 <= r["vae_images"] < 40  # round 4's 80 rows and 40 images are split
    assert max(max(x["denoise_peak_gb"], x["decode_peak_gb"]) for x in r["rounds"]) <= 12
    assert [x["frames"] * x["candidates"] for x in r["rounds"]] == [8, 14, 24, 40]
    assert "fits" in capsys.readouterr().out


def test_the_scheme_cost_counts_every_unet_call(capsys):
    """tools/scheme_cost.py on meta tensors at 256 px, FreeMorph on a 5-step schedule: its 4 inversion steps of
    5 fixed-point calls each cost what 20 plain calls of its 7 rows cost (the converged attention's mean is all
    it adds), and a plain call's FLOPs are the UNet's."""
    import scheme_cost
    from interp import freemorph
    r = scheme_cost.main(["--size", "256", "--freemorph-steps", "5"])
    fm, ours = r["freemorph"], r["ours"]
    assert fm["unet_calls"] == 4 * 5 + 4 * 2 and fm["rows_per_call"] == 7 and 0 < fm["peak_gb"] < 24
    cfg, sd, _ = scheme_cost.networks(256, torch.float16)
    plain = scheme_cost.flops(lambda: sd.unet(scheme_cost.meta(7, 4, 32, 32, dtype=torch.float16),
                                              scheme_cost.meta(7, dtype=torch.long),
                                              scheme_cost.meta(7, 77, 1024, dtype=torch.float16)))
    assert fm["inversion_flops"] == pytest.approx(20 * plain, rel=1e-3)
    assert fm["flops"] - fm["inversion_flops"] > 8 * plain  # denoising: 8 calls, the ends' attention on top
    assert ours["inversion_flops"] == pytest.approx(500 * 4 * 3 * plain / 7, rel=1e-6) and ours["flops"] > fm["flops"]
    assert "| freemorph | 7 | 5 |" in capsys.readouterr().out
    assert freemorph.calls(5) == fm["unet_calls"]


def test_the_malloc_benchmark_measures_each_setting(tiny_dir, capsys):
    """tools/bench_malloc.py on the tiny UNet: every setting in a process of its own, forward and backward."""
    import bench_malloc
    rows = bench_malloc.main(["--ckpt", str(tiny_dir / "tiny.safetensors"), "--side", "8", "--batch", "2", "--train",
                              "--recompute", "--dtype", "float32"])
    assert [r["setting"] for r in rows] == list(bench_malloc.SETTINGS)
    assert all(r["seconds"] > 0 and r["faults"] >= 0 and r["peak_rss_gb"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "| keep |" in out and "| accel |" in out and "forward + backward, blocks recomputed" in out


def test_the_rows_benchmark_times_each_batch(tiny_dir, capsys):
    """tools/bench_rows.py on the tiny networks: the UNet with its ControlNet and the decoder at each batch, and
    the batch the CPU rule gives."""
    import bench_rows
    rows = bench_rows.main(["--ckpt", str(tiny_dir / "tiny.safetensors"), "--controlnet",
                            str(tiny_dir / "controlnet.safetensors"), "--side", "8", "--rows", "1", "2", "--images", "1",
                            "--dtype", "float32", "--repeats", "1"])
    assert [(r["network"], r["batch"]) for r in rows] == [("unet + controlnet", 1), ("unet + controlnet", 2), ("decoder", 1)]
    assert all(r["seconds"] > 0 and r["faults"] >= 0 and r["peak_rss_gib"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "| unet + controlnet | 2 |" in out
    assert f"UNet {memory.rows_worth_batching('cpu', 'unet', (4, 8, 8))} rows" in out


def test_the_attention_benchmark_times_every_kernel_against_the_reference():
    """tools/bench_attention.py on a small shape: each kernel computes the same attention (so each time is of
    a real kernel), flex_attention and oneDNN Graph's fused partition included."""
    import bench_attention
    rows = bench_attention.main(["--shapes", "1,2,256,64", "--dtypes", "float32", "bfloat16", "--repeats", "1"])
    assert {r["kernel"] for r in rows} == {"fused", "fused on float32 copies", "chunked", "oneDNN Graph, scores in dtype",
                                           "flex_attention, compiled"}
    assert len(rows) == 10 and all(r["median_s"] > 0 for r in rows)
    assert all(r["error"] < (1e-5 if r["dtype"] == "float32" else 2e-2) for r in rows), rows


def test_the_attention_benchmark_times_each_kernel_inside_unet_calls(tiny_dir):
    """--unet: each kernel in whole calls of a UNet (the tiny checkpoint's), with the output's error against the
    float32 UNet's; in float32 every kernel gives that output, in bfloat16 each is a half model's error away."""
    import bench_attention
    rows = bench_attention.main(["--unet", "--ckpt", str(tiny_dir / "tiny.safetensors"), "--side", "8",
                                 "--batch", "2", "--dtypes", "float32", "bfloat16", "--repeats", "1", "--no-flex"])
    assert [(r["dtype"], r["kernel"]) for r in rows] == [
        (d, k) for d in ("float32", "bfloat16")
        for k in ("fused", "fused on float32 copies", "chunked", "oneDNN Graph, scores in dtype")]
    assert all(r["median_s"] > 0 for r in rows)
    assert all(r["error"] < 1e-5 for r in rows if r["dtype"] == "float32"), rows
    assert all(1e-4 < r["error"] < 5e-2 for r in rows if r["dtype"] == "bfloat16"), rows


def test_the_attention_benchmark_times_openvino_beside_torch():
    """--peer openvino (where OpenVINO is installed, as in the benchmarks' throwaway environment) adds OpenVINO's
    fused attention on the same inputs, and it computes the same attention."""
    pytest.importorskip("openvino")
    import bench_attention
    rows = bench_attention.main(["--shapes", "1,2,256,64", "--dtypes", "float32", "bfloat16", "--repeats", "1",
                                 "--no-flex", "--peer", "openvino"])
    peer = [r for r in rows if r["kernel"] == "OpenVINO's SDPA"]
    assert len(peer) == 2 and all(r["median_s"] > 0 for r in peer)
    assert all(r["error"] < (1e-5 if r["dtype"] == "float32" else 2e-2) for r in peer), peer


def test_the_unet_benchmark_splits_a_call_by_kind_of_operation(tiny_sd):
    """tools/bench.py --by-op on the tiny UNet: its convolutions, projections, attention and norms each land in
    their kind, and the kinds add up to the call."""
    import bench
    cfg = tiny_sd.config.unet
    x, ctx = torch.randn(2, cfg.in_channels, 8, 8), torch.randn(2, 77, cfg.context_dim)
    with torch.no_grad():
        split = bench.our_ops(lambda: tiny_sd.unet(x, torch.tensor([10, 10]), ctx))
    assert all(split[kind] > 0 for kind in ("convolution", "matmul", "attention", "normalisation", "other")), split
    assert split["total"] == pytest.approx(sum(v for k, v in split.items() if k != "total"))
