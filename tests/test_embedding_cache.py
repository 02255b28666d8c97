"""The on-disk embedding cache under concurrency and failure: several processes writing and reading the same keys
(two runs on one PARITY_CACHE_DIR, pytest -n) never see a torn entry or an error, and a failed write never fails
a render (issue 17, finding 3)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import torch

from parity.engine.text import CacheKey, EmbeddingCache

N_KEYS = 4
ROUNDS = 60


def _key(i: int) -> CacheKey:
    return CacheKey(text_encoder="te", tokenizer="tok", prompt=f"prompt {i}", max_length=8, layers=(1, 2),
                    dtype="fp32", quantize_te=None, te_cast="aitk")


def _value(i: int) -> torch.Tensor:
    # large enough that a write takes several syscalls, so a reader could catch a half-written file
    return torch.full((1, 64, 1024), float(i))


def _hammer(folder: str, worker: int, out) -> None:
    torch.set_num_threads(1)
    cache = EmbeddingCache(folder)
    problems = []
    for r in range(ROUNDS):
        i = (worker + r) % N_KEYS
        try:
            if r % 2:
                assert cache.put(_key(i), _value(i))
            got = cache.get(_key(i))
            if got is not None and not torch.equal(got, _value(i)):
                problems.append(f"key {i}: wrong content")
        except Exception as exc:  # noqa: BLE001 - any error is a finding
            problems.append(f"{type(exc).__name__}: {exc}")
    out.put(problems)


def test_concurrent_writers_and_readers_on_one_folder(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, out)) for w in range(4)]
    for p in procs:
        p.start()
    problems = [q for _ in procs for q in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
    assert problems == []
    assert all(p.exitcode == 0 for p in procs)
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"
    assert len(list(tmp_path.glob("*.safetensors"))) == N_KEYS


def test_a_failed_write_is_logged_and_leaves_nothing(tmp_path, caplog, monkeypatch):
    cache = EmbeddingCache(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    assert cache.put(_key(0), _value(0)) is False
    assert "No space left on device" in caplog.text
    assert list(Path(tmp_path).iterdir()) == []
    assert cache.get(_key(0)) is None

