"""CPU settings: oneDNN and glibc malloc thresholds set before TensorFlow starts, unless the
user's environment sets them."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from conftest import REPO

from app.runs.record import capture_env

PROBE = ("import json; from app.runtime.cpu import tune_cpu; import os; "
         "print(json.dumps([tune_cpu(), os.environ.get('TF_ENABLE_ONEDNN_OPTS')]))")


def probe(**env: str) -> tuple[dict, str | None]:
    clean = {k: v for k, v in os.environ.items()
             if k != "TF_ENABLE_ONEDNN_OPTS" and not k.startswith("MALLOC_")
             and k != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**clean, **env},
                            capture_output=True, text=True, check=True)
    applied, onednn = json.loads(result.stdout)
    return applied, onednn


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_defaults_turn_on_onednn_and_set_the_malloc_thresholds():
    applied, onednn = probe()
    assert onednn == "1"
    assert applied == {"TF_ENABLE_ONEDNN_OPTS": "1", "M_TRIM_THRESHOLD": 1 << 30,
                       "M_TOP_PAD": 256 << 20, "M_MMAP_THRESHOLD": 32 << 20}


def test_the_users_environment_wins():
    applied, onednn = probe(TF_ENABLE_ONEDNN_OPTS="0", MALLOC_ARENA_MAX="2",
                            MALLOC_MMAP_THRESHOLD_="65536")
    assert onednn == "0" and applied == {}


def test_a_run_records_its_cpu_settings():
    settings = capture_env(tf.distribute.get_strategy(), 0)["cpu_settings"]
    assert settings["environment"]["TF_ENABLE_ONEDNN_OPTS"] == os.environ["TF_ENABLE_ONEDNN_OPTS"]
    assert "M_MMAP_THRESHOLD" in settings["set_by_app"] or any(
        name.startswith("MALLOC_") for name in os.environ)
