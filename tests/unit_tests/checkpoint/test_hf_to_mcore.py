# Copyright (c) 2026, the megatron-minimax authors. All rights reserved.
"""``convert_minimax_m2.py hf-to-mcore``: the guarantees users meet.

* bad input or output: one line naming the file and tensor, exit status 2, no traceback, and
  nothing left at (or beside) ``--save-dir``;
* atomic, restartable output: an interrupted run leaves no checkpoint, a rerun gives the same
  bytes as a clean run, an existing checkpoint is replaced only with ``--overwrite``;
* values: FP8 blocks dequantised in fp32 and rounded once, the router kept in fp32, any number of
  workers giving the same tensors, freshly initialised MTP layers on request.

The CLI runs as a subprocess where its own behaviour (exit status, stderr, signals) is the point;
the other cases call :func:`convert_hf_to_mcore` directly, which is what the CLI runs.
"""

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron.minimax.checkpoint import hf_to_mcore
from megatron.minimax.checkpoint.aligned_record_file import ALIGNMENT
from megatron.minimax.checkpoint.hf_checkpoint import CheckpointError, HFCheckpoint
from megatron.minimax.checkpoint.hf_to_mcore import convert_hf_to_mcore
from megatron.minimax.checkpoint.torch_dist_writer import TorchDistFile
from megatron.minimax.testing.distributed import run_in_processes

ROOT = Path(__file__).resolve().parents[3]
TOOL = ROOT / "tools" / "checkpoint" / "convert_minimax_m2.py"
PROG = "convert_minimax_m2.py"
INDEX = "model.safetensors.index.json"

Q_PROJ = "model.layers.1.self_attn.q_proj.weight"
W2 = "model.layers.2.block_sparse_moe.experts.5.w2.weight"
K_NORM = "model.layers.1.self_attn.k_norm.weight"
GATE_KEY = "decoder.layers.mlp.router.weight"
BIAS_KEY = "decoder.layers.mlp.router.expert_bias"

# The tiny model: 4 layers x (4 attention units + 2 norms + 2 qk norms + router weight and bias
# + 8 experts x 2 units) + embedding, final norm, output layer.
NUM_UNITS = 4 * (4 + 2 + 8 * 2) + 3


# --------------------------------------------------------------------------------------- helpers


def _cli(*args, timeout=180):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(TOOL), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _incomplete(save_dir: Path) -> Path:
    return save_dir.parent / f".{save_dir.name}.incomplete"


def _assert_no_output(save_dir: Path) -> None:
    """Nothing at the destination and no hidden work directory beside it."""
    assert not save_dir.exists()
    assert not _incomplete(save_dir).exists()
    if save_dir.parent.is_dir():
        assert not [p.name for p in save_dir.parent.iterdir() if save_dir.name in p.name]


def _assert_cli_error(proc, save_dir: Path, *fragments) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{PROG}: error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert str(fragment) in errors[0], f"{fragment!r} not in {errors[0]!r}"
    _assert_no_output(save_dir)
    return errors[0]


def _assert_refused(hf_dir: Path, save_dir: Path, *fragments, **kwargs) -> str:
    with pytest.raises(CheckpointError) as err:
        convert_hf_to_mcore(hf_dir, save_dir, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    _assert_no_output(save_dir)
    return message


def _index(d: Path) -> dict:
    return json.loads((d / INDEX).read_text())


def _write_index(d: Path, index: dict) -> None:
    (d / INDEX).write_text(json.dumps(index))


def _shard_of(d: Path, name: str) -> Path:
    return d / _index(d)["weight_map"][name]


def _rewrite_shard(d: Path, name: str, edit) -> Path:
    """Rewrites the shard holding ``name`` after ``edit(tensors)``."""
    shard = _shard_of(d, name)
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})
    return shard


def _edit_config(d: Path, **changes) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    (d / "config.json").write_text(json.dumps(config))


def _release(ckpt: Path) -> Path:
    return ckpt / "release"


def _metadata(ckpt: Path):
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(str(_release(ckpt))).read_metadata()


def _tensor_set(ckpt: Path) -> dict:
    """key -> (global shape, dtype, sorted chunk offsets and sizes), from ``.metadata``."""
    out = {}
    for key, md in _metadata(ckpt).state_dict_metadata.items():
        if hasattr(md, "chunks"):
            chunks = sorted((tuple(c.offsets), tuple(c.sizes)) for c in md.chunks)
            out[key] = (tuple(md.size), md.properties.dtype, chunks)
        else:
            out[key] = "object"
    return out


def _load_dcp(ckpt: Path) -> dict:
    """Every tensor of a torch_dist checkpoint, read with PyTorch DCP (no process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(_release(ckpt)))
    state = {
        key: torch.full(tuple(md.size), float("nan")).to(md.properties.dtype)
        for key, md in reader.read_metadata().state_dict_metadata.items()
        if isinstance(md, TensorStorageMetadata)
    }
    dcp.load(state, storage_reader=reader, no_dist=True)
    return state


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        # Bitwise, NaN included.
        assert torch.equal(a[key].view(torch.uint8), b[key].view(torch.uint8)), key


def _distcp_bytes(ckpt: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(_release(ckpt).glob("*.distcp"))}


def _dequantize_reference(q: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """``float(q[i, j]) * scale_inv[i // 128, j // 128]`` in fp32, written independently of
    ``fp8_blockwise``."""
    rows, cols = q.shape
    full = scale_inv.float().repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
    return q.float() * full


def _hf_reference(hf_dir: Path, dtype: torch.dtype) -> dict:
    """What each HF tensor must read back as after conversion to ``dtype``."""
    ckpt = HFCheckpoint(hf_dir)
    out = {}
    for name in ckpt.tensor_names():
        tensor, scale = ckpt.get_raw(name)
        if scale is not None:
            assert tensor.dtype == torch.float8_e4m3fn
            out[name] = _dequantize_reference(tensor, scale).to(dtype)
        elif tensor.dtype == torch.float32:  # the router gate and bias
            out[name] = tensor
        else:
            out[name] = tensor.to(dtype)
    ckpt.close()
    return out


def _load_with_megatron_worker(rank, world_size, hf_config, checkpoints):
    """Loads each (dir, dtype) checkpoint with megatron-core at TP1; returns HF-named tensors."""
    from megatron.minimax.models.conversion.model_weights import iter_hf_weights
    from megatron.minimax.models.minimax_m2.parity import (
        ParallelLayout,
        build_from_dist_checkpoint,
        initialize_layout,
    )
    from megatron.minimax.models.minimax_m2.weight_mapping import MINIMAX_M2_WEIGHTS

    layout = ParallelLayout()
    initialize_layout(layout)
    out = []
    for load_dir, dtype in checkpoints:
        loaded = build_from_dist_checkpoint(hf_config, load_dir, layout, params_dtype=dtype)
        weights = iter_hf_weights(loaded.model, loaded.ctx, MINIMAX_M2_WEIGHTS)
        out.append({name: tensor.clone() for name, tensor in weights})
    return out


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def src(tiny_fp8_checkpoint, tmp_path):
    """A private copy of the tiny FP8 release-format checkpoint, free to break."""
    return Path(shutil.copytree(tiny_fp8_checkpoint, tmp_path / "hf"))


@pytest.fixture
def save_dir(tmp_path):
    """``--save-dir`` in an empty parent, so that any leftover sibling is visible."""
    parent = tmp_path / "out"
    parent.mkdir()
    return parent / "mcore"


@pytest.fixture(scope="module")
def conversions(tiny_fp8_checkpoint, tmp_path_factory):
    """Clean conversions of the tiny FP8 checkpoint, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("conversions")
    runs = {
        "bf16": dict(dtype=torch.bfloat16, workers=1),
        "bf16_w3": dict(dtype=torch.bfloat16, workers=3),
        "bf16_w2": dict(dtype=torch.bfloat16, workers=2),
        "fp32": dict(dtype=torch.float32, workers=2),
        "mtp": dict(dtype=torch.bfloat16, workers=2, mtp_num_layers=1),
        "mtp_again": dict(dtype=torch.bfloat16, workers=2, mtp_num_layers=1),
    }
    out = {}
    for name, kwargs in runs.items():
        stats = convert_hf_to_mcore(tiny_fp8_checkpoint, root / name, **kwargs)
        out[name] = (root / name, stats)
    return out


@pytest.fixture(scope="module")
def megatron_loaded(conversions, tiny_fp8_checkpoint):
    """The bf16 and fp32 conversions loaded by megatron-core (TP1), as HF-named tensors."""
    hf_config = json.loads((tiny_fp8_checkpoint / "config.json").read_text())
    checkpoints = [
        (str(conversions["bf16"][0]), torch.bfloat16),
        (str(conversions["fp32"][0]), torch.float32),
    ]
    (result,) = run_in_processes(_load_with_megatron_worker, 1, hf_config, checkpoints)
    return {"bf16": result[0], "fp32": result[1]}


# ------------------------------------------------------------------------------- bad input, CLI


class TestBadInputCLI:
    """Exit status 2, one ``convert_minimax_m2.py: error:`` line, no traceback, no output."""

    def test_missing_shard(self, src, save_dir):
        shard = _shard_of(src, W2)
        shard.unlink()
        proc = _cli("hf-to-mcore", "--hf-dir", src, "--save-dir", save_dir)
        _assert_cli_error(proc, save_dir, shard, "is missing", "tensor 'model.layers.")

    def test_truncated_shard(self, src, save_dir):
        shard = _shard_of(src, W2)
        os.truncate(shard, shard.stat().st_size - 100)
        proc = _cli("hf-to-mcore", "--hf-dir", src, "--save-dir", save_dir, "--no-progress")
        _assert_cli_error(proc, save_dir, shard, "truncated", "tensor 'model.layers.")

    def test_index_entry_leaving_the_directory_is_refused(self, src, save_dir):
        # A real shard is there to be read, had the path been followed.
        shutil.copy(_shard_of(src, W2), src.parent / "x.safetensors")
        index = _index(src)
        index["weight_map"][W2] = "../x.safetensors"
        _write_index(src, index)
        proc = _cli("hf-to-mcore", "--hf-dir", src, "--save-dir", save_dir)
        _assert_cli_error(proc, save_dir, "'../x.safetensors'", W2, "outside", "refused")

    def test_pickle_only_directory_is_refused_without_loading_it(self, src, save_dir, tmp_path):
        hf_dir = tmp_path / "pickled"
        hf_dir.mkdir()
        shutil.copy(src / "config.json", hf_dir)
        sentinel = tmp_path / "pickle-was-loaded"

        class Payload:
            # Unpickling calls open(sentinel, "w"): the file exists iff the pickle was loaded.
            def __reduce__(self):
                return (open, (str(sentinel), "w"))

        torch.save({"model.embed_tokens.weight": Payload()}, hf_dir / "pytorch_model.bin")
        proc = _cli("hf-to-mcore", "--hf-dir", hf_dir, "--save-dir", save_dir)
        _assert_cli_error(proc, save_dir, hf_dir, "pytorch_model.bin", "never loaded")
        assert not sentinel.exists()

    def test_output_parent_that_cannot_hold_a_directory(self, tiny_fp8_checkpoint, tmp_path):
        # The tests run as root, for whom chmod 0o555 on the parent does not stop mkdir
        # (CAP_DAC_OVERRIDE). A parent that is a regular file refuses any user.
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        save_dir = blocker / "mcore"
        proc = _cli("hf-to-mcore", "--hf-dir", tiny_fp8_checkpoint, "--save-dir", save_dir)
        _assert_cli_error(proc, save_dir, blocker, "not a directory")
        assert blocker.read_text() == "not a directory"


# ---------------------------------------------------------------------------- bad input, direct


class TestBadInput:
    """The same guarantees, through the function the CLI calls."""

    def test_corrupt_shard_header(self, src, save_dir):
        shard = _shard_of(src, W2)
        data = bytearray(shard.read_bytes())
        data[8:24] = b"\xff" * 16  # the start of the JSON header
        shard.write_bytes(bytes(data))
        _assert_refused(src, save_dir, shard, "corrupt safetensors header")

    def test_index_names_a_tensor_absent_from_its_shard(self, src, save_dir):
        shard = _rewrite_shard(src, Q_PROJ, lambda t: t.pop(Q_PROJ))
        _assert_refused(src, save_dir, shard, f"'{Q_PROJ}'", "not in it")

    def test_missing_weight_scale_inv(self, src, save_dir):
        shard = _rewrite_shard(src, W2, lambda t: t.pop(W2 + "_scale_inv"))
        index = _index(src)
        del index["weight_map"][W2 + "_scale_inv"]
        _write_index(src, index)
        _assert_refused(src, save_dir, shard, f"FP8 tensor '{W2}'", f"'{W2}_scale_inv'")

    def test_weight_scale_inv_of_the_wrong_shape(self, src, save_dir):
        scale = W2 + "_scale_inv"
        shard = _rewrite_shard(src, W2, lambda t: t.__setitem__(scale, torch.ones(2, 2)))
        _assert_refused(src, save_dir, shard, f"'{W2}_scale_inv'", "[2, 2]", "needs [1, 1]")

    def test_config_of_another_architecture(self, src, save_dir):
        _edit_config(src, architectures=["MiniMaxM1ForCausalLM"])
        _assert_refused(src, save_dir, src / "config.json", "MiniMaxM1ForCausalLM")

    @pytest.mark.parametrize(
        "changes, fragments",
        [
            ({"intermediate_size": 64}, ["experts.0.w1.weight", "[48, 64]", "(128, 64)"]),
            ({"hidden_size": 128}, ["model.embed_tokens.weight", "[1001, 64]", "(1024, 128)"]),
            ({"num_key_value_heads": 2}, ["self_attn.k_proj.weight", "[64, 64]"]),
            ({"vocab_size": 1000}, ["model.embed_tokens.weight", "1001 rows"]),
            ({"num_local_experts": 4}, ["unexpected 48", "experts.4.w1.weight"]),
        ],
        ids=["intermediate_size", "hidden_size", "num_key_value_heads", "vocab_size", "experts"],
    )
    def test_config_sizes_contradicting_the_tensors(self, src, save_dir, changes, fragments):
        _edit_config(src, **changes)
        message = _assert_refused(src, save_dir, *fragments)
        assert str(src) in message

    def test_config_contradiction_is_found_before_any_output(self, src, save_dir, monkeypatch):
        # Shapes are checked from the headers: no tensor is read, no directory created.
        _edit_config(src, intermediate_size=64)
        monkeypatch.setattr(
            HFCheckpoint, "get_raw", lambda *a: pytest.fail("tensor read before shape check")
        )
        monkeypatch.setattr(
            hf_to_mcore, "atomic_output_dir", lambda *a: pytest.fail("output before shape check")
        )
        _assert_refused(src, save_dir, "experts.0.w1.weight")

    def test_unexpected_extra_tensor(self, src, save_dir):
        extra = "model.layers.2.block_sparse_moe.shared_experts.up_proj.weight"
        _rewrite_shard(src, W2, lambda t: t.__setitem__(extra, torch.ones(4, 4)))
        index = _index(src)
        index["weight_map"][extra] = index["weight_map"][W2]
        _write_index(src, index)
        _assert_refused(src, save_dir, "unexpected 1", extra, "missing 0")

    def test_missing_tensor(self, src, save_dir):
        def drop(tensors):
            del tensors[W2], tensors[W2 + "_scale_inv"]

        _rewrite_shard(src, W2, drop)
        index = _index(src)
        del index["weight_map"][W2], index["weight_map"][W2 + "_scale_inv"]
        _write_index(src, index)
        _assert_refused(src, save_dir, "missing 1", W2, "unexpected 0")

    def test_nan_is_refused_naming_the_tensor(self, src, save_dir):
        def poison(tensors):
            value = tensors[K_NORM].clone()
            value[3] = float("nan")
            tensors[K_NORM] = value

        shard = _rewrite_shard(src, K_NORM, poison)
        _assert_refused(src, save_dir, shard, K_NORM, "1 NaN/Inf", "--allow-nonfinite", workers=2)

    def test_output_parent_refusing_mkdir(self, tiny_fp8_checkpoint, save_dir, monkeypatch):
        # As root, os.access() says a read-only or pseudo filesystem (/proc) is writable; mkdir
        # there fails all the same.
        def read_only_mkdir(self, *args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

        monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
        _assert_refused(
            tiny_fp8_checkpoint,
            save_dir,
            save_dir.parent,
            "cannot create the output directory there (Read-only file system)",
        )

    def test_not_enough_free_space(self, tiny_fp8_checkpoint, save_dir, monkeypatch):
        monkeypatch.setattr(hf_to_mcore, "free_bytes", lambda path: 1000)
        _assert_refused(tiny_fp8_checkpoint, save_dir, save_dir.parent, "free", "needs")


# ---------------------------------------------------------------------------- nonfinite, CLI


def test_allow_nonfinite_converts_and_reports(src, save_dir):
    def poison(tensors):
        raw = tensors[W2].clone()
        raw.view(torch.uint8)[5, 7] = 0x7F  # e4m3fn NaN
        tensors[W2] = raw

    _rewrite_shard(src, W2, poison)
    proc = _cli("hf-to-mcore", "--hf-dir", src, "--save-dir", save_dir, "--allow-nonfinite",
                "--workers", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "NaN/Inf in 1 tensors" in proc.stdout and W2 in proc.stdout
    provenance = json.loads((save_dir / "minimax_m2_conversion.json").read_text())
    assert provenance["stats"]["nonfinite"] == {W2: 1}
    fc2 = _load_dcp(save_dir)["decoder.layers.mlp.experts.experts.linear_fc2.weight"]
    assert torch.isnan(fc2[2, 5, 5, 7]) and int(torch.isnan(fc2).sum()) == 1


# --------------------------------------------------------------------- atomic, restartable output

_SLOW_CLI = """
import runpy, signal, sys, time
from megatron.minimax.checkpoint import torch_dist_writer

# Ctrl-C as in a terminal, even when the suite runs from a background job (whose children start
# with SIGINT ignored, and Python then installs no KeyboardInterrupt handler).
signal.signal(signal.SIGINT, signal.default_int_handler)

_write = torch_dist_writer.TorchDistFile.write_chunk
_log = sys.argv[1]

def write_chunk(self, chunk, tensor):
    time.sleep(0.05)
    n = _write(self, chunk, tensor)
    with open(_log, "a") as log:
        log.write(chunk.key + "\\n")
    return n

torch_dist_writer.TorchDistFile.write_chunk = write_chunk
sys.argv = [sys.argv[2]] + sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _start_slow_cli(tmp_path: Path, *args):
    """The CLI with every chunk write slowed to 50 ms and logged, so a signal lands mid-run."""
    script = tmp_path / "slow_cli.py"
    script.write_text(_SLOW_CLI)
    log = tmp_path / "chunks.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), str(log), str(TOOL), "hf-to-mcore", *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, log


def _wait_for_chunks(proc, log: Path, count: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (log.exists() and len(log.read_text().splitlines()) >= count):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "conversion did not start"
        time.sleep(0.01)


class TestAtomicOutput:
    def test_sigint_mid_conversion_leaves_nothing_and_stops_promptly(
        self, tiny_fp8_checkpoint, save_dir, tmp_path
    ):
        proc, log = _start_slow_cli(
            tmp_path, "--hf-dir", tiny_fp8_checkpoint, "--save-dir", save_dir, "--workers", "2"
        )
        _wait_for_chunks(proc, log, 6)
        assert _incomplete(save_dir).is_dir() and not save_dir.exists()
        proc.send_signal(signal.SIGINT)
        at_signal = len(log.read_text().splitlines())
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr and f"{PROG}: interrupted" in stderr
        _assert_no_output(save_dir)
        # The workers stop after the tensors they hold (each worker writes one tensor while it
        # converts the next; a tensor is at most two chunks), plus what was in flight while the
        # signal was sent, instead of converting the rest of their share.
        written = len(log.read_text().splitlines())
        assert written <= at_signal + 2 * 2 * 2 + 2 < NUM_UNITS, (at_signal, written)

    def test_sigkill_then_rerun_equals_a_clean_run(
        self, tiny_fp8_checkpoint, conversions, save_dir, tmp_path
    ):
        proc, log = _start_slow_cli(
            tmp_path, "--hf-dir", tiny_fp8_checkpoint, "--save-dir", save_dir, "--workers", "2"
        )
        _wait_for_chunks(proc, log, 10)
        proc.kill()
        proc.communicate(timeout=60)
        # SIGKILL runs no cleanup: only the hidden work directory is left, never a checkpoint.
        assert not save_dir.exists()
        assert (_incomplete(save_dir) / "release").is_dir()

        rerun = _cli("hf-to-mcore", "--hf-dir", tiny_fp8_checkpoint, "--save-dir", save_dir,
                     "--workers", "2")  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr
        assert f"wrote {save_dir}" in rerun.stdout
        assert not _incomplete(save_dir).exists()
        assert sorted(p.name for p in save_dir.parent.iterdir()) == [save_dir.name]

        clean = conversions["bf16_w2"][0]
        assert _tensor_set(save_dir) == _tensor_set(clean)
        assert _distcp_bytes(save_dir) == _distcp_bytes(clean)  # every chunk, byte for byte
        _assert_same_tensors(_load_dcp(save_dir), _load_dcp(clean))
        assert (save_dir / "latest_checkpointed_iteration.txt").read_text() == "release"

    def test_keyboard_interrupt_in_a_worker_leaves_nothing(
        self, tiny_fp8_checkpoint, save_dir, monkeypatch
    ):
        write = TorchDistFile.write_chunk
        calls = []

        def interrupted(self, chunk, tensor):
            calls.append(chunk.key)
            if len(calls) == 20:
                raise KeyboardInterrupt
            return write(self, chunk, tensor)

        monkeypatch.setattr(TorchDistFile, "write_chunk", interrupted)
        with pytest.raises(KeyboardInterrupt):
            convert_hf_to_mcore(tiny_fp8_checkpoint, save_dir, workers=2)
        _assert_no_output(save_dir)
        assert len(calls) < NUM_UNITS

    def test_non_empty_save_dir_is_refused_then_replaced_with_overwrite(
        self, tiny_fp8_checkpoint, conversions, save_dir
    ):
        save_dir.mkdir()
        (save_dir / "precious.txt").write_text("keep me")
        message = _assert_refused_keeping(tiny_fp8_checkpoint, save_dir)
        assert str(save_dir) in message and "--overwrite" in message
        assert (save_dir / "precious.txt").read_text() == "keep me"

        convert_hf_to_mcore(tiny_fp8_checkpoint, save_dir, overwrite=True, workers=2)
        assert not (save_dir / "precious.txt").exists()
        assert sorted(p.name for p in save_dir.parent.iterdir()) == [save_dir.name]
        assert _distcp_bytes(save_dir) == _distcp_bytes(conversions["bf16_w2"][0])

    def test_filesystem_without_o_direct_gets_the_same_bytes(
        self, tiny_fp8_checkpoint, conversions, save_dir, monkeypatch
    ):
        real_open = os.open
        refused = []

        def refuse_direct(path, flags, *args):
            if flags & os.O_DIRECT:
                refused.append(path)
                raise OSError(22, "Invalid argument")
            return real_open(path, flags, *args)

        monkeypatch.setattr(os, "open", refuse_direct)
        convert_hf_to_mcore(tiny_fp8_checkpoint, save_dir, workers=2)
        monkeypatch.undo()
        assert len(refused) == 4  # two workers' files, objects, common state
        assert _distcp_bytes(save_dir) == _distcp_bytes(conversions["bf16_w2"][0])

    def test_empty_save_dir_is_used_without_overwrite(self, tiny_fp8_checkpoint, save_dir):
        save_dir.mkdir()
        convert_hf_to_mcore(tiny_fp8_checkpoint, save_dir)
        assert (save_dir / "release" / ".metadata").is_file()


def _assert_refused_keeping(hf_dir: Path, save_dir: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        convert_hf_to_mcore(hf_dir, save_dir)
    assert not _incomplete(save_dir).exists()
    return str(err.value)


# ------------------------------------------------------------------------------------- values


class TestConvertedValues:
    def test_worker_count_does_not_change_any_tensor(self, conversions):
        one, three = conversions["bf16"][0], conversions["bf16_w3"][0]
        assert _tensor_set(one) == _tensor_set(three)
        assert len(list(_release(three).glob("*.distcp"))) == 3 + 2  # + objects + common state
        _assert_same_tensors(_load_dcp(one), _load_dcp(three))

    def test_bf16_is_the_fp32_dequantised_value_rounded_once(
        self, megatron_loaded, tiny_fp8_checkpoint
    ):
        expected = _hf_reference(tiny_fp8_checkpoint, torch.bfloat16)
        loaded = megatron_loaded["bf16"]
        assert loaded.keys() == expected.keys()
        for name, value in expected.items():
            assert loaded[name].dtype == value.dtype, name
            assert torch.equal(loaded[name].view(torch.uint8), value.view(torch.uint8)), name
        # Not vacuous: the FP8 experts really were rescaled by their block scales.
        raw = HFCheckpoint(tiny_fp8_checkpoint).get_raw(W2)[0]
        assert not torch.equal(loaded[W2].float(), raw.float())

    def test_fp32_keeps_the_dequantised_values_exactly(self, megatron_loaded, tiny_fp8_checkpoint):
        expected = _hf_reference(tiny_fp8_checkpoint, torch.float32)
        loaded = megatron_loaded["fp32"]
        assert loaded.keys() == expected.keys()
        for name, value in expected.items():
            assert loaded[name].dtype == torch.float32, name
            assert torch.equal(loaded[name], value), name
        # fp32 keeps bits that bf16 rounds away.
        assert not torch.equal(loaded[W2], loaded[W2].to(torch.bfloat16).float())

    @pytest.mark.parametrize("run", ["bf16", "fp32"])
    def test_router_gate_and_bias_stay_fp32(self, conversions, run, tiny_fp8_checkpoint):
        state = _metadata(conversions[run][0]).state_dict_metadata
        assert state[GATE_KEY].properties.dtype == torch.float32
        assert state[BIAS_KEY].properties.dtype == torch.float32
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[run]
        assert state["decoder.layers.self_attention.linear_qkv.weight"].properties.dtype == dtype
        # The bias is copied bit for bit from the fp32 on-disk tensor.
        loaded = _load_dcp(conversions[run][0])
        bias = HFCheckpoint(tiny_fp8_checkpoint).get_raw(
            "model.layers.3.block_sparse_moe.e_score_correction_bias"
        )[0]
        assert torch.equal(loaded[BIAS_KEY][3], bias)

    def test_padded_vocabulary_rows_are_zero(self, conversions):
        loaded = _load_dcp(conversions["bf16"][0])
        for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
            assert loaded[key].shape[0] == 1024
            assert not loaded[key][1001:].any() and loaded[key][:1001].abs().sum(1).all()

    def test_stats_and_provenance(self, conversions, tiny_fp8_checkpoint):
        ckpt, stats = conversions["bf16"]
        assert stats.tensors_read == len(HFCheckpoint(tiny_fp8_checkpoint).tensor_names())
        assert stats.bytes_read == HFCheckpoint(tiny_fp8_checkpoint).total_bytes()
        # One worker: its data file holds every tensor chunk (objects and common state follow).
        assert stats.bytes_written == (_release(ckpt) / "__0_0.distcp").stat().st_size
        chunks = sum(len(v[2]) for v in _tensor_set(ckpt).values() if v != "object")
        assert stats.chunks_written == chunks
        assert stats.nonfinite == {} and stats.fresh_mtp_tensors == 0
        provenance = json.loads((ckpt / "minimax_m2_conversion.json").read_text())
        assert provenance["dtype"] == "bfloat16" and provenance["padded_vocab_size"] == 1024
        assert provenance["source_quantization"]["weight_block_size"] == [128, 128]

    def test_chunk_records_are_aligned_and_written_without_zip_crc(self, conversions):
        # Every tensor chunk is a torch.save record on a 4 KiB boundary (O_DIRECT writes), and
        # the writer threads, not only the main thread, write them without CRC32s.
        ckpt = _release(conversions["bf16_w2"][0])
        metadata = _metadata(conversions["bf16_w2"][0])
        chunks = [
            (index, info) for index, info in metadata.storage_data.items()
            if index.offset is not None
        ]  # fmt: skip
        assert len(chunks) > 100
        for index, info in chunks:
            assert info.offset % ALIGNMENT == 0, index.fqn
            with open(ckpt / info.relative_path, "rb") as f:
                f.seek(info.offset)
                record = zipfile.ZipFile(io.BytesIO(f.read(info.length)))
            assert {entry.CRC for entry in record.infolist()} == {0}, index.fqn


class TestMTP:
    def test_mtp_layer_keys_and_documented_init(self, conversions):
        from megatron.minimax.models.minimax_m2.hf_config import minimax_m2_config_from_hf

        ckpt, stats = conversions["mtp"]
        loaded = _load_dcp(ckpt)
        mtp = {k: v for k, v in loaded.items() if k.startswith("mtp.")}
        assert mtp and all(k.startswith("mtp.layers.0.") for k in mtp)
        assert stats.fresh_mtp_tensors > 0
        for key in (
            "mtp.layers.0.enorm.weight",
            "mtp.layers.0.hnorm.weight",
            "mtp.layers.0.eh_proj.weight",
            "mtp.layers.0.final_layernorm.weight",
            "mtp.layers.0.transformer_layer.self_attention.linear_qkv.weight",
            "mtp.layers.0.transformer_layer.mlp.experts.experts.linear_fc1.weight",
        ):
            assert key in mtp, key

        config = json.loads((ckpt / "minimax_m2_conversion.json").read_text())["hf_config"]
        megatron_config, _ = minimax_m2_config_from_hf(config, mtp_num_layers=1)
        std = megatron_config.init_method_std
        output_std = std / (2.0 * megatron_config.num_layers) ** 0.5
        norms = [k for k in mtp if "norm" in k]
        assert len(norms) == 7  # e/h/final norms, qkv and fc1 pre-norms, q and k norms
        for key in norms:
            assert mtp[key].dtype == torch.bfloat16 and torch.equal(
                mtp[key], torch.ones_like(mtp[key])
            ), key
        bias = mtp["mtp.layers.0.transformer_layer.mlp.router.expert_bias"]
        assert bias.dtype == torch.float32 and not bias.any()
        assert mtp["mtp.layers.0.transformer_layer.mlp.router.weight"].dtype == torch.float32
        for key, expected in (
            ("mtp.layers.0.eh_proj.weight", std),
            ("mtp.layers.0.transformer_layer.self_attention.linear_qkv.weight", std),
            ("mtp.layers.0.transformer_layer.mlp.experts.experts.linear_fc1.weight", std),
            ("mtp.layers.0.transformer_layer.self_attention.linear_proj.weight", output_std),
            ("mtp.layers.0.transformer_layer.mlp.experts.experts.linear_fc2.weight", output_std),
        ):
            value = mtp[key].float()
            assert abs(value.mean()) < 0.1 * expected, key
            assert abs(value.std() / expected - 1) < 0.1, (key, value.std(), expected)
        # Seeded by name: no two matrices share their values.
        assert not torch.equal(
            mtp["mtp.layers.0.eh_proj.weight"],
            mtp["mtp.layers.0.transformer_layer.self_attention.linear_proj.weight"],
        )

    def test_mtp_init_is_deterministic_and_leaves_the_model_unchanged(self, conversions):
        first, second = conversions["mtp"][0], conversions["mtp_again"][0]
        assert _distcp_bytes(first) == _distcp_bytes(second)
        with_mtp = _load_dcp(first)
        without = _load_dcp(conversions["bf16"][0])
        model_part = {k: v for k, v in with_mtp.items() if not k.startswith("mtp.")}
        _assert_same_tensors(model_part, without)


# ---------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "args, flags",
    [
        ([], ["hf-to-mcore", "mcore-to-hf", "Exit status"]),
        (
            ["hf-to-mcore"],
            ["--hf-dir", "--save-dir", "--dtype", "--mtp-num-layers", "--overwrite", "--workers",
             "--allow-nonfinite", "--no-progress"],
        ),  # fmt: skip
        (
            ["mcore-to-hf"],
            ["--load-dir", "--hf-reference-dir", "--save-dir", "--format", "--max-shard-size",
             "--drop-mtp", "--overwrite", "--no-progress"],
        ),  # fmt: skip
    ],
    ids=["tool", "hf-to-mcore", "mcore-to-hf"],
)
def test_help(args, flags):
    proc = _cli(*args, "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for flag in flags:
        assert flag in text, flag
