"""A test double for the Hub's *write* path only; reads go through olah, a real server.

No installable server accepts uploads offline, so this implements the documented
endpoints the unmodified huggingface_hub client calls when it uploads without Xet:
validate-yaml, create-repo, branch, preupload, LFS batch + basic PUT, commit (NDJSON)
and tag, plus the two reads a checked push makes before committing (whoami-v2, and the
repo's refs to see whether the tag exists). Every
commit is written with git plumbing into a repository under ``mirrors/models/NS/NAME``,
which olah then serves, so a test pushes with the real client and pulls the same bytes
back through a real server. Requests without the expected bearer token get 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import yaml

LFS_SUFFIXES = (".safetensors", ".png", ".bin")


class GitRepo:
    """A non-bare git repository written only through plumbing (the work tree is never touched)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def git(self, *args: str, data: bytes | None = None, env: dict | None = None) -> str:
        result = subprocess.run(
            ["git", *args],
            cwd=self.path,
            input=data,
            capture_output=True,
            check=True,
            env={
                **os.environ,
                "GIT_AUTHOR_NAME": "hub",
                "GIT_AUTHOR_EMAIL": "hub@localhost",
                "GIT_COMMITTER_NAME": "hub",
                "GIT_COMMITTER_EMAIL": "hub@localhost",
                **(env or {}),
            },
        )
        return result.stdout.decode().strip()

    def init(self) -> None:
        self.path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")
        self.commit(
            "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit"
        )

    def resolve(self, revision: str) -> str | None:
        try:
            return self.git("rev-parse", "--verify", "-q", f"{revision}^{{commit}}")
        except subprocess.CalledProcessError:
            return None

    def commit(self, branch: str, files: dict[str, bytes], message: str, deleted: tuple[str, ...] = ()) -> str:
        parent = self.resolve(f"refs/heads/{branch}")
        index = self.path / ".git" / f"index-{secrets.token_hex(4)}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            if parent:
                self.git("read-tree", parent, env=env)
            for name, content in files.items():
                blob = self.git("hash-object", "-w", "--stdin", data=content)
                self.git("update-index", "--add", "--cacheinfo", f"100644,{blob},{name}", env=env)
            for name in deleted:
                self.git("update-index", "--force-remove", name, env=env)
            tree = self.git("write-tree", env=env)
        finally:
            index.unlink(missing_ok=True)
        sha = self.git("commit-tree", tree, *(["-p", parent] if parent else []), "-m", message)
        self.git("update-ref", f"refs/heads/{branch}", sha)
        return sha


def repo_claiming(mirror_root: Path, name: str, claimed: str) -> GitRepo:
    """A hostile model repo ``evil/<name>`` in the olah mirror whose manifest lists ``claimed``, a
    file the repo does not hold (a pull must never delete a user's file of that name)."""
    repo = GitRepo(mirror_root / "mirrors" / "models" / "evil" / name)
    repo.path.mkdir(parents=True)
    repo.git("init", "-q", "-b", "main")
    manifest = {"files": {claimed: {"sha256": "0" * 64, "size": 3}}}
    repo.commit("main", {"obsdiff-manifest.json": json.dumps(manifest).encode(), "model_index.json": b"{}"}, "hostile")
    return repo


class HubWriteDouble:
    def __init__(self, mirrors: Path, token: str, host: str = "127.0.0.1") -> None:
        self.mirrors = mirrors
        self.token = token
        self.lfs_dir = mirrors.parent / "lfs-uploads"
        self.lfs_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.pending_uploads: dict[str, str] = {}  # upload key -> oid
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer((host, 0), self._handler())
        self.endpoint = f"http://{host}:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubWriteDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo(self, repo_id: str) -> GitRepo:
        return GitRepo(self.mirrors / "models" / repo_id)

    def _handler(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def reply(
                self,
                status: int,
                payload: dict | None = None,
                content_type: str = "application/json",
                headers: dict | None = None,
            ) -> None:
                body = json.dumps(payload or {}).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def authorized(self) -> bool:
                if self.headers.get("authorization") == f"Bearer {double.token}":
                    return True
                self.reply(401, {"error": "Invalid credentials in Authorization header"})
                return False

            def do_GET(self) -> None:
                double.requests.append(f"GET {self.path}")
                if not self.authorized():
                    return
                path = unquote(self.path.split("?")[0])
                if path == "/api/whoami-v2":
                    return self.reply(
                        200, {"type": "user", "name": "zoo", "orgs": [], "auth": {"type": "access_token"}}
                    )
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/refs", path)
                if match:
                    with double.lock:
                        return self.refs(match.group(1))
                self.reply(404, {"error": "other reads are served by olah"})

            def refs(self, repo_id: str) -> None:
                repo = double.repo(repo_id)
                if not repo.path.exists():
                    return self.reply(
                        404, {"error": f"Repository {repo_id} not found"}, headers={"X-Error-Code": "RepoNotFound"}
                    )
                listed = repo.git(
                    "for-each-ref", "--format=%(refname) %(objectname) %(*objectname)", "refs/heads", "refs/tags"
                )

                def entry(ref: str, target: str) -> dict:
                    return {"name": ref.split("/", 2)[2], "ref": ref, "targetCommit": target}

                branches, tags = [], []
                for line in listed.splitlines():
                    ref, obj, peeled = (line.split(" ") + [""])[:3]
                    (branches if ref.startswith("refs/heads/") else tags).append(entry(ref, peeled or obj))
                return self.reply(200, {"branches": branches, "converts": [], "tags": tags})

            def do_PUT(self) -> None:
                double.requests.append(f"PUT {self.path.split('?')[0]}")
                match = re.fullmatch(r"/lfs-upload/([0-9a-f]{32})", self.path)
                oid = double.pending_uploads.pop(match.group(1), None) if match else None
                data = self.body()
                if oid is None:
                    return self.reply(403, {"error": "unknown upload URL"})
                if hashlib.sha256(data).hexdigest() != oid:
                    return self.reply(400, {"error": "content does not match oid"})
                (double.lfs_dir / oid).write_bytes(data)
                self.reply(200)

            def do_POST(self) -> None:
                double.requests.append(f"POST {self.path}")
                if not self.authorized():
                    return
                path = unquote(self.path.split("?")[0])
                routes = [
                    (r"/api/validate-yaml", self.validate_yaml),
                    (r"/api/repos/create", self.create_repo),
                    (r"/api/models/([^/]+/[^/]+)/preupload/(.+)", self.preupload),
                    (r"/api/models/([^/]+/[^/]+)/commit/(.+)", self.commit),
                    (r"/api/models/([^/]+/[^/]+)/tag/(.+)", self.tag),
                    (r"/api/models/([^/]+/[^/]+)/branch/(.+)", self.branch),
                    (r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", self.lfs_batch),
                ]
                for pattern, route in routes:
                    match = re.fullmatch(pattern, path)
                    if match:
                        with double.lock:
                            return route(*match.groups())
                self.reply(404, {"error": f"no route {path}"})

            def validate_yaml(self) -> None:
                content = json.loads(self.body())["content"]
                if not content.startswith("---\n"):
                    return self.reply(
                        200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
                    )
                try:
                    meta = yaml.safe_load(content.split("---\n", 2)[1])
                except yaml.YAMLError as error:
                    return self.reply(400, {"errors": [{"message": f"YAML parse error: {error}"}]})
                if not isinstance(meta, dict):
                    return self.reply(400, {"errors": [{"message": "metadata must be a YAML mapping"}]})
                self.reply(200, {"errors": [], "warnings": []})

            def create_repo(self) -> None:
                data = json.loads(self.body())
                repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                url = f"{double.endpoint}/{repo_id}"
                repo = double.repo(repo_id)
                if repo.path.exists():
                    return self.reply(409, {"error": "You already created this model repo", "url": url})
                repo.init()
                self.reply(200, {"url": url})

            def existing(self, repo_id: str) -> GitRepo | None:
                repo = double.repo(repo_id)
                if not repo.path.exists():
                    self.reply(404, {"error": f"Repository {repo_id} not found"})
                    return None
                return repo

            def preupload(self, repo_id: str, revision: str) -> None:
                if self.existing(repo_id) is None:
                    return
                files = json.loads(self.body())["files"]
                modes = []
                for f in files:
                    sample = base64.b64decode(f["sample"])
                    lfs = f["path"].endswith(LFS_SUFFIXES) or b"\x00" in sample or f["size"] > 10 * 1024**2
                    modes.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
                self.reply(200, {"files": modes})

            def lfs_batch(self, repo_id: str) -> None:
                if self.existing(repo_id) is None:
                    return
                data = json.loads(self.body())
                objects = []
                for obj in data["objects"]:
                    entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                    if not (double.lfs_dir / obj["oid"]).exists():
                        key = secrets.token_hex(16)
                        double.pending_uploads[key] = obj["oid"]
                        entry["actions"] = {"upload": {"href": f"{double.endpoint}/lfs-upload/{key}"}}
                    objects.append(entry)
                self.reply(200, {"transfer": "basic", "objects": objects}, "application/vnd.git-lfs+json")

            def commit(self, repo_id: str, revision: str) -> None:
                repo = self.existing(repo_id)
                if repo is None:
                    return
                files: dict[str, bytes] = {}
                deleted: list[str] = []
                summary = "commit"
                for line in self.body().decode().splitlines():
                    item = json.loads(line)
                    value = item["value"]
                    if item["key"] == "header":
                        summary = value.get("summary") or summary
                        parent = value.get("parentCommit")
                        if parent and parent != repo.resolve(f"refs/heads/{revision}"):
                            return self.reply(412, {"error": "parentCommit is not the head of the branch"})
                    elif item["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "lfsFile":
                        stored = double.lfs_dir / value["oid"]
                        if not stored.exists():
                            return self.reply(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                        files[value["path"]] = stored.read_bytes()
                    elif item["key"] in ("deletedFile", "deletedFolder"):
                        deleted.append(value["path"])
                if repo.resolve(f"refs/heads/{revision}") is None:
                    return self.reply(404, {"error": f"branch {revision} not found"})
                sha = repo.commit(revision, files, summary, tuple(deleted))
                self.reply(200, {"commitUrl": f"{double.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha})

            def tag(self, repo_id: str, revision: str) -> None:
                repo = self.existing(repo_id)
                if repo is None:
                    return
                data = json.loads(self.body())
                sha = repo.resolve(revision)
                if sha is None:
                    return self.reply(404, {"error": f"revision {revision} not found"})
                if repo.resolve(f"refs/tags/{data['tag']}") is not None:
                    return self.reply(409, {"error": f"tag {data['tag']} already exists"})
                repo.git("tag", "-a", data["tag"], sha, "-m", data.get("message") or data["tag"])
                self.reply(200)

            def branch(self, repo_id: str, branch: str) -> None:
                repo = self.existing(repo_id)
                if repo is None:
                    return
                raw = self.body()
                start = (json.loads(raw) if raw else {}).get("startingPoint") or "refs/heads/main"
                if repo.resolve(f"refs/heads/{branch}") is not None:
                    return self.reply(409, {"error": f"branch {branch} already exists"})
                repo.git("update-ref", f"refs/heads/{branch}", repo.resolve(start) or "")
                self.reply(200)

        return Handler
