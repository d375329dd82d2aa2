"""Every request this package makes to the Hugging Face Hub, in one place.

One validator of repo ids, one :class:`HubClient` carrying the endpoint and the token (from
the argument, else huggingface_hub's usual places: ``HF_TOKEN``, the login cache), one
translation of Hub failures into a :class:`~obsdiff_hub.errors.HubError` line that names the
repo and the fix and never the token, and one body for downloading a snapshot and checking it
against its sha256 manifest (``pull`` and ``from_pretrained(verify=True)`` both use it).

A manifest is checked against the file list of exactly the commit that was downloaded, never the
branch head: a push that moves the branch during a long download cannot make a manifest entry
look like a repo file (see ``storage/manifest.py``).
``push`` uploads a folder plus files built in memory (card, manifest) as one commit and tags
it; token, repo, branch and tag are checked before anything is created.
"""

from __future__ import annotations

import importlib
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    constants,
    get_session,
    get_token,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .errors import HubError, InputError
from .storage.files import is_regular_file
from .storage.manifest import MANIFEST, build_manifest, manifest_bytes, verify_manifest
from .storage.outputs import FOLDER_SUFFIX_BYTES, Destination, HeldFolder, check_name_lengths, real_folders

# The HTTP library huggingface_hub uses (httpx, or httpx2 in 2.x): its transport errors.
_TRANSPORT_ERROR: type[Exception] = importlib.import_module(
    type(get_session()).__module__.split(".")[0]
).TransportError
_KNOWN = (
    LocalTokenNotFoundError,
    HfHubHTTPError,
    _TRANSPORT_ERROR,
    LocalEntryNotFoundError,
    ConnectionError,
)  # offline mode is a ConnectionError


BUILTIN_PREFIX = "builtin:"


def builtin_name(source: str) -> str | None:
    """``NAME`` of a ``builtin:NAME`` source (a model or prompt set shipped with this package), else None:
    the one place a source is told apart from a folder or a Hub repo id."""
    return source.removeprefix(BUILTIN_PREFIX) if source.startswith(BUILTIN_PREFIX) else None


def looks_like_local_path(source: str) -> bool:
    """What the Hub would never accept as a repo id: absolute or relative paths, ``~``,
    backslashes, or more than one ``/`` (a repo id is ``name`` or ``namespace/name``)."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or os.sep in source
        and os.sep != "/"
    )


def check_repo_id(repo_id: str, *, namespaced: bool = False) -> str:
    """``repo_id`` if the Hub accepts it (``namespaced``: it must be ``NAMESPACE/NAME``), else an
    :class:`InputError`."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise InputError(f"invalid repo id {repo_id!r}: {str(error).splitlines()[0]}") from None
    if namespaced and "/" not in repo_id:
        raise InputError(f"invalid repo id {repo_id!r}: use NAMESPACE/NAME")
    return repo_id


REF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
RESERVED_REFS = frozenset({"HEAD", "main"})


def check_ref_name(name: str, what: str, *, reserved: frozenset[str] = frozenset({"HEAD"})) -> str:
    """``name`` if git (and so the Hub) accepts it as a branch or tag name, and it is not ``reserved``; else a
    one-line :class:`InputError` before anything is committed. Stricter than git: letters, digits, ``.``,
    ``_`` and ``-``, no ``..``, not ending in ``.`` or ``.lock``, at most 200 characters."""
    if (
        not REF_NAME.fullmatch(name)
        or ".." in name
        or name.endswith((".", ".lock"))
        or len(name) > 200
        or name in reserved
    ):
        taken = f"; {name!r} is reserved" if name in reserved else ""
        raise InputError(
            f"{what} {name[:80]!r} is not a valid git branch or tag name (letters, digits, '.', '_' and '-'; no '..', "
            f"not ending in '.' or '.lock'){taken}"
        )
    return name


def local_folder_or_repo(source: str) -> Path | None:
    """A local folder (as a Path), or None for a valid Hub repo id; a one-line error otherwise.

    A path that does not exist is reported as a missing folder, not as a malformed repo id.
    """
    if os.path.exists(source):
        if not os.path.isdir(source):
            raise InputError(f"{source} is a file; give the checkpoint's folder")
        return Path(source)
    if looks_like_local_path(source):
        raise InputError(f"local folder {source} does not exist")
    try:
        validate_repo_id(source)
    except HFValidationError as error:
        raise InputError(
            f"{source!r} is neither a local folder nor a valid Hub repo id ({str(error).splitlines()[0]})"
        ) from None
    return None


@dataclass(frozen=True)
class Snapshot:
    """A downloaded revision: where it is, the commit it holds, and the files that commit lists."""

    path: Path
    commit: str | None
    files: set[str] | None


@dataclass(frozen=True)
class Fetched:
    """A checkpoint made available: its folder, the commit it holds (None for a local folder), and
    how many files were checked against its manifest."""

    path: Path
    commit: str | None
    checked: int


@dataclass(frozen=True)
class PushResult:
    commit: str
    tag: str | None
    url: str


@dataclass(frozen=True)
class HubClient:
    """The Hub at ``endpoint`` (default: ``HF_ENDPOINT`` or huggingface.co), as ``token`` (default:
    ``HF_TOKEN`` or the login cache). Every request of this package goes through one of these."""

    endpoint: str | None = None
    token: str | None = None
    api: HfApi = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "api", HfApi(endpoint=self.endpoint, token=self.token))

    @property
    def url(self) -> str:
        return self.endpoint or constants.ENDPOINT

    def scrub(self, message: str) -> str:
        """``message`` without any token this process could have sent (servers may echo it)."""
        for secret in {self.token, os.environ.get("HF_TOKEN"), get_token()}:
            if secret:
                message = message.replace(secret, "***")
        return message

    @contextmanager
    def errors(self, source: str | None = None, *, maybe_folder: bool = False) -> Iterator[None]:
        """Hub failures inside the block as one :class:`HubError` line that names the endpoint, the
        repo ``source`` if given, and the fix: a missing token, a missing or private repo, a missing
        revision, an unreachable Hub. ``maybe_folder``: ``source`` could also have meant a local
        folder (which does not exist), the likelier mistake offline. Other errors pass through."""
        try:
            yield
        except (_TRANSPORT_ERROR, OSError) as raised:
            # diffusers re-raises Hub failures as its own OSError, with the Hub's error as the cause
            # (explicit causes only: an unrelated local error raised while handling one is not one)
            chain: list[BaseException] = [raised]
            while len(chain) < 16 and chain[-1].__cause__ is not None:
                chain.append(chain[-1].__cause__)
            error = next((e for e in chain if isinstance(e, _KNOWN)), None)
            if error is None:
                raise
            raise HubError(self.scrub(self._explain(error, source, maybe_folder))) from None

    def _explain(self, error: BaseException, source: str | None, maybe_folder: bool) -> str:
        what = f"{source}: " if source else ""
        if isinstance(error, LocalTokenNotFoundError):
            return f"{what}no Hub token: set HF_TOKEN (or pass a `token`), or run `hf auth login`"
        if isinstance(error, RepositoryNotFoundError):  # also gated and private repos the token cannot see
            return (
                f"{what}no such repo on {self.url}, or it is private or gated: check the name and your token "
                "(HF_TOKEN)"
            )
        if isinstance(error, RevisionNotFoundError):
            return f"{what}that revision does not exist on {self.url}; check the `revision`"
        if isinstance(error, HfHubHTTPError):
            status = error.response.status_code if error.response is not None else "?"
            detail = ((error.server_message or str(error)).strip().splitlines() or ["no detail"])[0]
            return f"{what}{self.url} refused the request ({status}): {detail}"
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        where = "no local folder has that name, and " if maybe_folder else ""
        cache = ", nor find it in the cache" if source else ""
        return (
            f"{what}{where}cannot reach the Hub at {self.url}{cache} ({reason}); check the name, the endpoint "
            "and your connection"
        )

    # ------------------------------------------------------------------ reads

    def commit_of(self, repo_id: str, revision: str | None, repo_type: str = "model") -> str:
        """The commit sha a branch, tag or sha names now."""
        info = self.api.repo_info(repo_id, revision=revision or "main", repo_type=repo_type)
        return str(info.sha)

    def files_at(self, repo_id: str, commit: str) -> set[str]:
        """The files the repository holds at ``commit`` (the Hub's own list, not a local folder)."""
        info = self.api.model_info(repo_id, revision=commit)
        return {s.rfilename for s in info.siblings or []}

    def snapshot(
        self,
        repo_id: str,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        maybe_folder: bool = False,
        listing: bool = True,
    ) -> Snapshot:
        """``repo_id`` at ``revision`` in the Hub cache: its folder, the commit it holds, and (with
        ``listing``, online) that commit's file list. The cache names each snapshot folder by its
        commit and records the branch or tag, so an offline load finds it later."""
        with self.errors(repo_id, maybe_folder=maybe_folder):
            path = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=cache_dir,
                    token=self.token,
                    endpoint=self.endpoint,
                    local_files_only=local_files_only,
                )
            )
            listed = listing and not local_files_only and not constants.HF_HUB_OFFLINE
            return Snapshot(path, path.name, self.files_at(repo_id, path.name) if listed else None)

    def staged_snapshot(
        self, repo_id: str, stage: Path, *, revision: str | None = None, maybe_folder: bool = False
    ) -> Snapshot:
        """``repo_id`` at the commit ``revision`` names now, downloaded into the fresh folder ``stage``."""
        with self.errors(repo_id, maybe_folder=maybe_folder):
            commit = self.commit_of(repo_id, revision)
            snapshot_download(repo_id, revision=commit, local_dir=stage, token=self.token, endpoint=self.endpoint)
            return Snapshot(stage, commit, self.files_at(repo_id, commit))

    def download_file(
        self, repo_id: str, filename: str, *, repo_type: str = "model", revision: str | None = None
    ) -> Path:
        """One file of a repository (e.g. calibration prompts from a dataset repo)."""
        check_repo_id(repo_id)
        with self.errors(repo_id):
            return Path(
                hf_hub_download(
                    repo_id, filename, repo_type=repo_type, revision=revision, token=self.token, endpoint=self.endpoint
                )
            )

    # ------------------------------------------------------------------ writes

    def refs(self, repo_id: str) -> tuple[set[str], set[str]]:
        """The repo's branch and tag names (both empty for a repo that does not exist yet)."""
        with self.errors(repo_id):
            try:
                refs = self.api.list_repo_refs(repo_id)
            except RepositoryNotFoundError:
                return set(), set()
        return {b.name for b in refs.branches}, {t.name for t in refs.tags}

    def push(
        self,
        directory: Path,
        repo_id: str,
        *,
        in_memory: dict[str, bytes],
        tag: str | None,
        commit_message: str,
        tag_message: str,
        private: bool = False,
        branch: str | None = None,
    ) -> PushResult:
        """One commit of every regular, non-hidden file under ``directory`` plus ``in_memory``
        (path in repo → bytes, taking precedence), then ``tag`` (if any) on it. The token, the repo's
        refs and the tag are checked first, so a failed push leaves the repo as it was."""
        check_repo_id(repo_id, namespaced=True)
        if tag is not None:
            check_ref_name(tag, "tag")
        if branch is not None:
            check_ref_name(branch, "branch")
        operations = [
            CommitOperationAdd(path_in_repo=relative, path_or_fileobj=str(path))
            for path in sorted(directory.rglob("*"))
            if path.is_file()
            and not path.is_symlink()
            and not any(part.startswith(".") for part in path.relative_to(directory).parts)
            and (relative := path.relative_to(directory).as_posix()) not in in_memory
        ]
        operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in in_memory.items()]
        with self.errors():
            self.api.whoami()  # a wrong or missing token fails here, before anything is created
            branches, tags = self.refs(repo_id)
            if tag in tags:
                raise HubError(f"tag {tag} already exists on {repo_id}; choose another `tag` (nothing was committed)")
            self.api.create_repo(repo_id, private=private, exist_ok=True)
            if branch and branch not in branches:
                self.api.create_branch(repo_id, branch=branch, exist_ok=True)
            info = self.api.create_commit(
                repo_id, operations=operations, commit_message=commit_message, revision=branch
            )
            if tag is not None:
                self.api.create_tag(repo_id, tag=tag, revision=info.oid, tag_message=tag_message)
        return PushResult(info.oid, tag, info.commit_url)


def resolve_source(source: str, revision: str | None = None, client: HubClient | None = None) -> Path:
    """A local folder as is; a Hub repo id through a snapshot download (cache, token from the environment)."""
    folder = local_folder_or_repo(source)
    if folder is not None:
        return folder
    return (client or HubClient()).snapshot(source, revision=revision, maybe_folder=True, listing=False).path


def cached_snapshot(
    source: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path | None:
    """The folder a ``from_pretrained(source)`` read: a local directory, or its snapshot in the
    Hub cache; None when nothing of it is local."""
    if os.path.isdir(source):
        return Path(source)
    try:
        return Path(snapshot_download(source, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None


def move_into(stage: HeldFolder, folder: HeldFolder) -> None:
    """Every file of a staged download into ``folder``, by rename through both descriptors: each
    destination's folders must be real folders (checked for all files before the first moves), and a
    link at a destination name is replaced, never followed. The download's own ``.cache`` bookkeeping
    stays behind."""
    files = [
        p.relative_to(stage.pinned)
        for p in sorted(stage.pinned.rglob("*"))
        if is_regular_file(p) and p.relative_to(stage.pinned).parts[0] != ".cache"
    ]
    for relative in files:
        real_folders((folder.pinned / relative).parent, folder.pinned, create=False)
    for relative in files:
        folder.move_in(stage, relative.as_posix())


def fetch(
    source: str,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    local_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    verify: bool = True,
    hub_only: bool = False,
    client: HubClient | None = None,
) -> Fetched:
    """A checkpoint, checked against its ``obsdiff-manifest.json`` (only the files under
    ``subfolder``, if given) unless ``verify`` is off.

    A local folder is only checked; nothing in it is ever deleted. A Hub repo is downloaded once;
    every manifest entry must be a file of exactly the commit downloaded, and a file that does not
    match is deleted from that fresh download (a later load cannot pick it up). With ``local_dir``
    the download is staged in a fresh folder inside it, verified there, and only then moved in.
    ``hub_only``: ``source`` is a repo id even if a local folder has that name (``pull``).
    """
    folder = local_folder_or_repo(source) if not hub_only else None
    if folder is not None:
        return Fetched(folder, None, verify_manifest(folder, subfolder) if verify else 0)
    client = client or HubClient()
    if local_dir is None:
        snapshot = client.snapshot(
            source,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            maybe_folder=not hub_only,
        )
        checked = (
            verify_manifest(snapshot.path, subfolder, repo_files=snapshot.files, delete=snapshot.files is not None)
            if verify
            else 0
        )
        return Fetched(snapshot.path, snapshot.commit, checked)
    target = Path(local_dir)
    check_name_lengths(target, FOLDER_SUFFIX_BYTES)
    with Destination(target) as place, place.parent() as parent, parent.folder(target.name) as held:
        stage = held.make_temp_folder(".obsdiff-pull-")  # the download lands in the held folder, nowhere else
        try:
            snapshot = client.staged_snapshot(source, stage.pinned, revision=revision, maybe_folder=not hub_only)
            checked = verify_manifest(stage.pinned, subfolder, repo_files=snapshot.files, delete=True) if verify else 0
            held.verify()
            move_into(stage, held)
        finally:
            stage.close()
            if held.exists(stage.path.name):
                held.remove_tree(stage.path.name)
    return Fetched(target, snapshot.commit, checked)


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    local_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    verify: bool = True,
) -> Fetched:
    """Download a revision (branch, tag or sha) of a published checkpoint, checked against its
    manifest unless ``verify`` is off: where it is, and the commit it holds."""
    check_repo_id(repo_id, namespaced=True)
    return fetch(
        repo_id,
        revision=revision,
        local_dir=local_dir,
        cache_dir=cache_dir,
        verify=verify,
        hub_only=True,
        client=HubClient(endpoint, token),
    )


__all__ = [
    "MANIFEST",
    "HubClient",
    "PushResult",
    "build_manifest",
    "cached_snapshot",
    "check_repo_id",
    "fetch",
    "move_into",
    "local_folder_or_repo",
    "looks_like_local_path",
    "manifest_bytes",
    "pull",
    "resolve_source",
]
