"""Safe by construction: real attacks against every place a stranger's file reaches.

Hostile pickles (legacy conversion), hostile manifests (pull, verify=True), output folders
that hold the user's files (--overwrite, .partial), and file modes. Each attack uses a
marker file that must not appear or a victim file that must survive byte for byte.
"""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from interrupts import interrupted_after_pruning
from typer.testing import CliRunner

import obsdiff_hub as oh
from obsdiff_hub import tiny
from obsdiff_hub.architectures import architecture_of
from obsdiff_hub.architectures.surgery import keep_heads, keep_neurons
from obsdiff_hub.cli import app
from obsdiff_hub.storage.manifest import MANIFEST, ManifestError, verify_manifest

runner = CliRunner()
HANDLER = "torch.distributed.elastic.multiprocessing.subprocess_handler.subprocess_handler"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ a tiny pickle assembler


def const(value) -> bytes:
    """Opcodes that push ``value`` (a plain constant)."""
    return pickle.dumps(value, 2)[2:-1]


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def call(target: bytes, *args: bytes) -> bytes:
    """``target(*args)``: the callable's opcodes, a tuple of the arguments, REDUCE."""
    return target + b"(" + b"".join(args) + b"tR"


def as_list(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


def program(body: bytes, protocol: int = 2) -> bytes:
    return bytes([0x80, protocol]) + body + b"."


def corpus(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name → (pickle, the global the refusal must name). Each would run its payload under pickle.loads."""
    m = str(marker)
    touch = const(["touch", m])
    os_module = call(glob("importlib", "import_module"), const("os")) + b"q\x00" + b"0"  # memo 0 := os, popped
    return {
        "os.system": (program(call(glob("os", "system"), const(f"touch {m}"))), "os.system"),
        "posix.system": (program(call(glob("posix", "system"), const(f"touch {m}"))), "posix.system"),
        "builtins.eval": (
            program(call(glob("builtins", "eval"), const(f"__import__('os').system('touch {m}')"))),
            "builtins.eval",
        ),
        "builtins.exec": (
            program(call(glob("builtins", "exec"), const(f"open({m!r}, 'w').close()"))),
            "builtins.exec",
        ),
        "builtins.getattr": (
            program(
                call(
                    call(
                        glob("builtins", "getattr"), call(glob("builtins", "__import__"), const("os")), const("system")
                    ),
                    const(f"touch {m}"),
                )
            ),
            "builtins.getattr",
        ),
        "subprocess.Popen": (program(call(glob("subprocess", "Popen"), touch)), "subprocess.Popen"),
        "torch re-export of Popen": (program(call(glob(HANDLER, "Popen"), touch)), f"{HANDLER}.Popen"),
        "SubprocessHandler": (
            program(
                call(
                    glob(HANDLER, "SubprocessHandler"),
                    const("touch"),
                    const((m,)),
                    const({}),
                    const(None),
                    const(None),
                    const(0),
                )
            ),
            f"{HANDLER}.SubprocessHandler",
        ),
        "importlib.import_module": (
            program(
                os_module + call(call(glob("builtins", "getattr"), b"h\x00", const("system")), const(f"touch {m}"))
            ),
            "importlib.import_module",
        ),
        "copyreg._reconstructor with a dangerous base": (
            program(
                call(
                    glob("copyreg", "_reconstructor"), glob("subprocess", "Popen"), glob("subprocess", "Popen"), touch
                )
            ),
            "copyreg._reconstructor",
        ),
        "dotted-name walk": (
            program(call(glob("torch", "serialization.os.system"), const(f"touch {m}")), protocol=4),
            "torch.serialization.os.system",
        ),
        "diffusers function that writes files": (
            program(
                call(
                    glob("diffusers.utils.export_utils", "export_to_gif"),
                    as_list(call(glob("PIL.Image", "new"), const("RGB"), const((2, 2)))),
                    const(m + ".gif"),
                )
            ),
            "diffusers.utils.export_utils.export_to_gif",
        ),
        "torch.save": (program(call(glob("torch", "save"), const(1), const(m))), "torch.save"),
        "torch.load": (
            program(call(glob("torch.serialization", "load"), const(m + ".other"))),
            "torch.serialization.load",
        ),
    }


def torch_zip(path: Path, data_pkl: bytes) -> Path:
    """The torch.save zip layout, so the reader gets as far as unpickling."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
    return path


def marker_files(marker: Path) -> list[Path]:
    return [p for p in marker.parent.iterdir() if p.name.startswith(marker.name)]


def test_the_corpus_is_live_under_plain_pickle(tmp_path):
    """Control: the same bytes really run their payload when unpickled normally."""
    live = [
        "os.system",
        "builtins.getattr",
        "torch re-export of Popen",
        "copyreg._reconstructor with a dangerous base",
        "dotted-name walk",
        "diffusers function that writes files",
        "importlib.import_module",
    ]
    for name in live:
        marker = tmp_path / f"{abs(hash(name))}" / "PWNED"
        marker.parent.mkdir()
        data = corpus(marker)[name][0]
        subprocess.run(
            [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
            input=data,
            capture_output=True,
            timeout=120,
        )
        deadline = time.monotonic() + 10
        while not marker_files(marker) and time.monotonic() < deadline:  # Popen returns before touch finishes
            time.sleep(0.05)
        assert marker_files(marker), f"{name}: the control payload did not run"


@pytest.mark.parametrize("name", list(corpus(Path("/x/PWNED"))))
def test_hostile_pickles_are_refused_by_name_and_run_nothing(name, tmp_path):
    marker = tmp_path / "PWNED"
    data, offender = corpus(marker)[name]
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(data)
    for path in (torch_zip(tmp_path / "evil.pth", data), raw):  # torch's zip layout, and a bare pickle
        with pytest.raises(
            oh.UnsafePickleError,
            match=f"references {offender.replace('.', '[.]')}, which a model checkpoint never needs",
        ):
            oh.convert_legacy(path, tmp_path / "out")
        result = invoke("convert-legacy", path, "--out", tmp_path / "cli-out")
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and offender in lines[0] and "Traceback" not in result.output
    time.sleep(0.2)
    assert marker_files(marker) == [] and not (tmp_path / "out").exists() and not (tmp_path / "cli-out").exists()


def test_malformed_tensor_records_and_state_on_real_objects_are_refused(tmp_path):
    storage = b"(X\x07\x00\x00\x00storageq\x00ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ"
    outside = program(
        call(
            glob("torch._utils", "_rebuild_tensor_v2"),
            storage,
            const(0),
            const((100,)),
            const((1,)),
            const(False),
            call(glob("collections", "OrderedDict")),
        )
    )
    path = tmp_path / "bad.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", outside)
        archive.writestr("archive/data/0", b"\x00" * 4)
    with pytest.raises(oh.UnsafePickleError, match="outside its storage"):
        oh.convert_legacy(path)
    build_on_tensor = program(
        call(
            glob("torch._utils", "_rebuild_tensor_v2"),
            storage,
            const(0),
            const((1,)),
            const((1,)),
            const(False),
            call(glob("collections", "OrderedDict")),
        )
        + const((0, False, {"hook": 1}))
        + b"b"
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", build_on_tensor)
        archive.writestr("archive/data/0", b"\x00" * 4)
    with pytest.raises(oh.UnsafePickleError, match="sets state on a Tensor"):
        oh.convert_legacy(path)
    calls_a_module_class = program(call(glob("torch.nn.modules.linear", "Linear"), const(4), const(4)))
    with pytest.raises(oh.UnsafePickleError, match="calls torch.nn.modules.linear.Linear with arguments"):
        oh.convert_legacy(torch_zip(tmp_path / "call.pth", calls_a_module_class))


def _legacy_pruned(family: str) -> torch.nn.Module:
    """What the reference project publishes: a diffusers model pruned in place, pickled whole."""
    torch.manual_seed(0)
    model = tiny.TINY_DENOISERS[family]().eval()
    for coupling in architecture_of(model).couplings(model):
        count = coupling.count(model)
        keep = torch.arange(count - max(1, count // 3), dtype=torch.long)
        (keep_heads if hasattr(coupling, "head_dim") else keep_neurons)(model, coupling, keep)
    return model


@pytest.mark.parametrize("family", ["sd3", "sdxl"])
def test_real_legacy_pickles_of_pruned_models_still_convert_with_equal_weights(family, tmp_path):
    model = _legacy_pruned(family)
    torch.save(model, tmp_path / "legacy.pth")
    converted = oh.convert_legacy(tmp_path / "legacy.pth", tmp_path / "converted")
    assert type(converted).__name__.startswith("OBSDiff")
    reloaded = type(converted).from_pretrained(tmp_path / "converted")
    for loaded in (converted, reloaded):
        a, b = loaded.state_dict(), model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------- manifests


def _snapshot_with_manifest(root: Path, entries: dict) -> Path:
    snapshot = root / "snapshot"
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "unet" / "w.safetensors").write_bytes(b"weights")
    (snapshot / MANIFEST).write_text(json.dumps({"algorithm": "sha256", "files": entries}))
    return snapshot


@pytest.mark.parametrize(
    "entry", ["../victim.txt", "{victim}", "unet/../../victim.txt", "unet/link.safetensors", "unet/dir/x.safetensors"]
)
def test_manifest_entries_cannot_reach_outside_the_snapshot(entry, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("my thesis")
    before = victim.read_bytes()
    name = entry.format(victim=victim)
    wrong = {"sha256": "0" * 64, "size": 9}
    snapshot = _snapshot_with_manifest(
        tmp_path, {"unet/w.safetensors": {"sha256": hashlib.sha256(b"weights").hexdigest(), "size": 7}, name: wrong}
    )
    (snapshot / "unet" / "link.safetensors").symlink_to(victim)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.safetensors").write_text("not yours")
    (snapshot / "unet" / "dir").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ManifestError, match="refusing|outside"):
        verify_manifest(snapshot)
    assert victim.read_bytes() == before and (outside / "x.safetensors").read_text() == "not yours"
    assert (snapshot / "unet" / "w.safetensors").is_file()  # nothing was touched before the refusal


def test_a_hostile_manifest_from_the_hub_deletes_nothing_outside_the_snapshot(hub, tmp_path):
    from hub_double import GitRepo

    from obsdiff_hub.hub import pull

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    repo = GitRepo(hub.root / "mirrors" / "models" / "evil" / "manifest")
    repo.path.mkdir(parents=True)
    repo.git("init", "-q", "-b", "main")
    cache = tmp_path / "cache"
    depth = "../" * 7  # from cache/models--evil--manifest/snapshots/<sha>/ up to tmp_path and beyond
    manifest = {
        "files": {
            f"{depth}{tmp_path.name}/victim.txt": {"sha256": "0" * 64, "size": 7},
            str(victim): {"sha256": "0" * 64, "size": 7},
        }
    }
    repo.commit("main", {MANIFEST: json.dumps(manifest).encode(), "model_index.json": b"{}"}, "hostile")
    with pytest.raises(ManifestError, match="refusing"):
        pull("evil/manifest", cache_dir=cache)
    assert victim.read_text() == "keep me"


# ------------------------------------------------------------------------- output folders


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def prune_tiny(out: Path, *extra):
    return invoke("prune", "--recipe", "tiny-sd3-unstructured-50", "--out", out, "--quiet", *extra)


def test_overwrite_never_deletes_the_users_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("do not lose")
    result = prune_tiny(mine, "--overwrite")
    assert result.exit_code == 2 and "notes.txt, which obsdiff-hub did not write" in result.output
    assert (mine / "notes.txt").read_text() == "do not lose" and len(list(mine.iterdir())) == 1

    out = tmp_path / "out"
    assert prune_tiny(out).exit_code == 0
    (out / "my-notes.md").write_text("added by hand")  # now the folder holds something of the user's
    refused = prune_tiny(out, "--overwrite")
    assert refused.exit_code == 2 and "my-notes.md" in refused.output and (out / "my-notes.md").exists()
    (out / "my-notes.md").unlink()
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)  # the marker came along, but it names the original folder
    assert prune_tiny(copy, "--overwrite").exit_code == 2 and (copy / "recipe.yaml").exists()
    (tmp_path / "afile").write_text("x")
    assert prune_tiny(tmp_path / "afile").exit_code == 2 and (tmp_path / "afile").read_text() == "x"


def test_overwrite_replaces_an_earlier_output_only_once_the_new_one_is_complete(tmp_path, monkeypatch):
    from obsdiff_hub.zoo import cards

    out = tmp_path / "out"
    assert prune_tiny(out).exit_code == 0
    earlier = _snapshot(out)

    with monkeypatch.context() as patch:
        patch.setattr(cards, "render_card", interrupted_after_pruning(cards.render_card))
        assert prune_tiny(out, "--overwrite", "--set", "prune.sparsity=0.6").exit_code == 130
    assert _snapshot(out) == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.partial"]
    assert prune_tiny(out, "--overwrite", "--set", "prune.sparsity=0.6", "--restart").exit_code == 0
    assert _snapshot(out) != earlier and "sparsity: 0.6" in (out / "recipe.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_partial_folder_is_touched_only_when_it_is_this_tools_and_asked(tmp_path):
    foreign = tmp_path / "o.partial"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("unrelated")
    for extra in ((), ("--restart",), ("--resume",)):
        result = prune_tiny(tmp_path / "o", *extra)
        assert result.exit_code == 2 and "not created by obsdiff-hub" in result.output, extra
        assert (foreign / "mine.txt").read_text() == "unrelated"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("umask,folders,files", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_outputs_follow_the_umask_weights_included(umask, folders, files, tmp_path):
    previous = os.umask(umask)
    try:
        out = oh.save_pruned(tiny.tiny_flux_pipeline(), tmp_path / "o")
    finally:
        os.umask(previous)
    weights = list(out.rglob("*.safetensors"))
    assert weights
    for path in [out, *out.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (folders if path.is_dir() else files), (path, oct(mode))


# ------------------------------------------- attacks found by an independent probe, kept fixed


def test_a_recipe_cannot_make_the_evaluation_read_a_file_outside_its_folder(tmp_path):
    secret = tmp_path / "secrets" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("SECRET-LINE hunter2\n")
    base = (Path(__file__).parent.parent / "recipes" / "tiny-sd3-unstructured-50.yaml").read_text()
    (tmp_path / "recipes").mkdir()
    for where in (str(secret), "../secrets/id_rsa"):
        recipe = tmp_path / "recipes" / "r.yaml"
        recipe.write_text(
            base + f"evaluation:\n  metrics: [psnr]\n  prompts: {where}\n  num: 2\n  steps: 2\n  resolution: 32\n"
        )
        result = invoke("prune", "--recipe", recipe, "--out", tmp_path / "o", "--quiet")
        assert result.exit_code == 2 and "must be a relative path inside the recipe's folder" in result.output, (
            result.output
        )
        assert not (tmp_path / "o").exists()


def test_pull_into_a_local_dir_never_deletes_a_file_the_repo_does_not_hold(hub, tmp_path):
    from hub_double import repo_claiming

    from obsdiff_hub.hub import pull

    repo_claiming(hub.root, "localdir", "thesis.tex")
    project = tmp_path / "myproject"
    project.mkdir()
    (project / "thesis.tex").write_text("thesis\n")
    with pytest.raises(ManifestError, match="which the repository does not hold"):
        pull("evil/localdir", local_dir=project)
    assert (project / "thesis.tex").read_text() == "thesis\n"
    # verify=True on a folder the user points at checks, and never deletes
    (project / MANIFEST).write_text(json.dumps({"files": {"thesis.tex": {"sha256": "0" * 64, "size": 7}}}))
    with pytest.raises(ManifestError, match="it was not used"):
        verify_manifest(project)
    assert (project / "thesis.tex").read_text() == "thesis\n"


def _interrupted_after_one_package(out: Path, monkeypatch) -> None:
    from obsdiff_hub.zoo import resume

    original = resume.DiskState.package_done

    def stop(self, index, model, report):
        original(self, index, model, report)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(resume.DiskState, "package_done", stop)
        assert prune_tiny(out).exit_code == 130


def test_resume_never_deletes_files_the_user_put_in_the_partial_folder(tmp_path, monkeypatch):
    out = tmp_path / "o"
    _interrupted_after_one_package(out, monkeypatch)
    partial = tmp_path / "o.partial"
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in partial.rglob("*.safetensors"))  # umask 022
    (partial / "mydata.txt").write_text("my notes")
    (partial / "state" / "notes.txt").write_text("more notes")
    for extra in (("--resume",), ("--restart",), ()):
        result = prune_tiny(out, *extra)
        assert result.exit_code == 2 and "which obsdiff-hub did not write" in result.output, (extra, result.output)
    assert (partial / "mydata.txt").read_text() == "my notes" and (
        partial / "state" / "notes.txt"
    ).read_text() == "more notes"
    (partial / "mydata.txt").unlink()
    (partial / "state" / "notes.txt").unlink()
    assert prune_tiny(out, "--resume").exit_code == 0 and not partial.exists()


def test_a_finished_checkpoint_is_never_taken_for_saved_progress(tmp_path):
    assert prune_tiny(tmp_path / "ck.partial").exit_code == 0
    before = _snapshot(tmp_path / "ck.partial")
    result = prune_tiny(tmp_path / "ck")
    assert result.exit_code == 2 and "is an obsdiff-hub checkpoint, not saved progress" in result.output
    assert _snapshot(tmp_path / "ck.partial") == before


def test_the_card_command_never_writes_through_a_link(tmp_path):
    out = tmp_path / "o"
    assert prune_tiny(out).exit_code == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(victim)
    assert invoke("card", out).exit_code == 0
    assert victim.read_text() == "precious"
    assert not (out / "README.md").is_symlink() and "obs-diff" in (out / "README.md").read_text()


def test_a_server_echoing_the_token_does_not_get_it_printed(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({"error": f"bad token {self.headers.get('authorization')}"}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "o"
    assert prune_tiny(out).exit_code == 0
    try:
        result = invoke(
            "push",
            out,
            "--repo-id",
            "zoo/x",
            "--token",
            "hf_SUPERSECRET123",
            "--endpoint",
            f"http://127.0.0.1:{server.server_port}",
        )
    finally:
        server.shutdown()
    assert result.exit_code == 2 and "***" in result.output and "hf_SUPERSECRET123" not in result.output


def _saved_zip(model, path: Path, compress: bool = False) -> Path:
    torch.save(model, path)
    if compress:
        rewritten = path.with_suffix(".deflated.pth")
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                target.writestr(info.filename, source.read(info), compress_type=zipfile.ZIP_DEFLATED)
        return rewritten
    return path


def test_legacy_memory_bombs_and_malformed_trees_are_refused_in_one_line(tmp_path):
    model = tiny.tiny_sd3_transformer()
    weight = model.transformer_blocks[0].ff.net[2].weight
    weight.data = torch.zeros(1).expand(weight.shape)  # a few bytes standing for the whole matrix
    with pytest.raises(oh.UnsafePickleError, match="not dense"):
        oh.convert_legacy(_saved_zip(model, tmp_path / "stride0.pth"))
    with pytest.raises(oh.UnsafePickleError, match="compressed, which torch.save never does"):
        oh.convert_legacy(_saved_zip(tiny.tiny_sd3_transformer(), tmp_path / "bomb.pth", compress=True))
    malformed = tiny.tiny_sd3_transformer()
    malformed.__dict__["_parameters"] = []
    with pytest.raises(oh.UnsafePickleError, match="_parameters is a list, not a table"):
        oh.convert_legacy(_saved_zip(malformed, tmp_path / "list.pth"))
    broken = tiny.tiny_sd3_transformer()
    broken._internal_dict = type(broken._internal_dict)({**broken.config, "num_layers": "abc"})
    with pytest.raises(oh.UnsafePickleError, match="its config does not build a SD3Transformer2DModel"):
        oh.convert_legacy(_saved_zip(broken, tmp_path / "config.pth"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "calibration.prompts.count=10000000000"], "calibration.prompts.count"),
        (["--set", "calibration.scheduler=SchedulerMixin"], "not compatible with this pipeline"),
        (["--set", "calibration.scheduler=KarrasVeScheduler"], "not compatible with this pipeline"),
        (["--set", "calibration.scheduler=os"], "not compatible with this pipeline"),
    ],
)
def test_hostile_settings_are_one_line_errors(args, message, tmp_path):
    result = invoke("prune", "--recipe", "tiny-sd3-unstructured-50", "--out", tmp_path / "o", "--quiet", *args)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1, (
        result.output
    )


def test_a_path_is_never_taken_for_a_shipped_recipe_name(tmp_path):
    (tmp_path / "trav.yaml").write_text(
        (Path(__file__).parent.parent / "recipes" / "tiny-sd3-unstructured-50.yaml").read_text()
    )
    relative = os.path.relpath(tmp_path / "trav", Path(__file__).parent.parent / "recipes")
    result = invoke("recipes", "show", relative)
    assert result.exit_code == 2 and "not a shipped recipe's name" in result.output
