import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


def test_throughput_prints_rates_flops_mfu_and_the_estimate():
    args = [
        "--width",
        "0.0625",
        "--size",
        "16",
        "--classes",
        "5",
        "--batch",
        "8",
        "--steps",
        "2",
        "--warmup-steps",
        "0",
        "--device",
        "cpu",
        "--peak-tflops",
        "1.0",
    ]
    out = (
        subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        .stdout.strip()
        .splitlines()
    )
    record = json.loads(out[0])
    assert set(record["images_per_s"]) == {"ce", "supcon", "excon", "head_epoch"}
    assert all(v > 0 for v in record["images_per_s"].values())
    flops = record["gflops_per_image"]
    # one view per image for ce, two for supcon; excon adds Grad-CAM, the masked forward and
    # background negatives on top of supcon's two views
    assert 0 < flops["ce"] < flops["supcon"] < flops["excon"]
    # MFU = achieved / peak (peak given as 1 TFLOP/s here); both printed rounded
    assert abs(record["mfu"]["excon"] - record["achieved_tflops"]["excon"]) <= 1e-3
    # the ratio of the printed (rounded) rates, within their rounding
    ratio = record["images_per_s"]["supcon"] / record["images_per_s"]["excon"]
    assert abs(record["excon_over_supcon_time"] - ratio) < 0.01 * ratio
    printed = float(out[1].rsplit("excon/supcon time ratio ", 1)[1])
    assert abs(printed - record["excon_over_supcon_time"]) <= 0.0051
    assert out[2].startswith("MFU: ce ") and "estimated 200-epoch CIFAR-100 ExCon run" in out[3]
