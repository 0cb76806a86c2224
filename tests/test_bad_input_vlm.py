"""Bad input, VLM checkpoints (bench/vlm): a malicious pickle is refused without running it: either
a one-line error that names the input (exit 2, no traceback) or the input is handled and what
was skipped is counted (issue 9; split from tests/test_bad_input.py by area in issue 25)."""

from __future__ import annotations

import os

import pytest


# --------------------------------------------------------------------- a malicious checkpoint

def test_malicious_checkpoint_is_refused_in_one_line_without_running_it(tmp_path):
    import pickle

    from bench.errors import BenchError
    from bench.vlm.train import check_checkpoint
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "last.ckpt"
    with open(ckpt, "wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    with pytest.raises(BenchError) as info:
        check_checkpoint(ckpt)
    assert not marker.exists()
    msg = str(info.value)
    assert "\n" not in msg and str(ckpt) in msg and "--no-resume" in msg
    import torch
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 1}, tmp_path / "ok.ckpt")
    check_checkpoint(tmp_path / "ok.ckpt")  # plain tensors load
