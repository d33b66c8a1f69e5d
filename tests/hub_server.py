"""A stand-in Hugging Face Hub for tests, on 127.0.0.1: the HTTP endpoints huggingface_hub's client calls to create a
repository (model or Space) and a branch, upload a folder with Xet off (README validation, preupload, the LFS batch API
with upload and verify, commit) and download it again (repository info, tree listing, resolve), keeping file contents
in a folder. It serves LFS files itself (the Hub redirects to a CDN), with the headers the client reads either way.
Any other endpoint is answered 404 and recorded in `unknown`, so that a test sees when the client calls something new;
a test makes one endpoint fail through `failures`.
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from huggingface_hub import ModelCard, SpaceCard


LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".npy", ".zip", ".png", ".jpg")
"""Files the Hub's default .gitattributes sends through LFS; binary or large (>10 MiB) files go there too."""
LFS_MIN_SIZE = 10 * 1024 * 1024
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
KIND = r"(?P<kind>models|spaces)"
PREFIX = r"(?P<prefix>spaces/)?"
ROUTES = [
    ("POST", r"/api/repos/create", "create"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/agent-harnesses", "agent_harnesses"),
    ("GET", rf"/api/{KIND}/{REPO}(?:/revision/(?P<revision>[^/]+))?", "info"),
    ("GET", rf"/api/{KIND}/{REPO}/tree/(?P<revision>[^/]+)", "tree"),
    ("POST", rf"/api/{KIND}/{REPO}/branch/(?P<revision>[^/]+)", "branch"),
    ("POST", rf"/api/{KIND}/{REPO}/preupload/(?P<revision>[^/]+)", "preupload"),
    ("POST", rf"/{PREFIX}{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
    ("POST", r"/lfs-storage/(?P<oid>[0-9a-f]{64})/verify", "lfs_verify"),
    ("POST", rf"/api/{KIND}/{REPO}/commit/(?P<revision>[^/]+)", "commit"),
    ("HEAD", rf"/{PREFIX}{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "resolve"),
    ("GET", rf"/{PREFIX}{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "resolve"),
]
SPACE_SDKS = ("gradio", "docker", "static")


def git_blob_id(content: bytes) -> str:
    """The git object id of a file: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass
class Repo:
    kind: str  # models or spaces
    private: bool
    sdk: str | None
    branches: dict  # branch -> commit id
    trees: dict  # commit id -> {path: (sha256, stored through LFS)}


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **fields):
        super().__init__(message)
        self.status, self.code, self.fields = status, code, fields  # fields: more of the error's JSON body


class StandInHub(ThreadingHTTPServer):
    """The stand-in Hub, serving from a thread while used as a context manager. `token` is the one valid token."""

    daemon_threads = True

    def __init__(self, storage: Path, token: str):
        super().__init__(("127.0.0.1", 0), HubRequestHandler)
        self.endpoint = f"http://127.0.0.1:{self.server_port}"
        self.objects = Path(storage) / "objects"  # file contents by sha256
        self.objects.mkdir(parents=True)
        self.token = token
        self.repos: dict[str, Repo] = {}  # "models/user/name" -> Repo
        self.verified_lfs: set[str] = set()  # sha256 of LFS objects uploaded, checked and verified
        self.calls: list[str] = []  # endpoint names in order
        self.commits: list[tuple[str, str, str]] = []  # ("models/user/name", branch, summary) in order
        self.unknown: list[str] = []  # "METHOD path" of requests no endpoint answers
        self.failures: dict[str, tuple[int, str]] = {}  # endpoint name -> (status, message) it answers instead
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)

    @property
    def repo_calls(self) -> list[str]:
        """`calls` less the client's fetch of its agent registry, which a process makes once, on its first request."""
        return [call for call in self.calls if call != "agent_harnesses"]

    def tree(self, repo_id: str, kind: str = "models", revision: str = "main") -> dict:
        repo = self.repos[f"{kind}/{repo_id}"]
        return repo.trees[repo.branches.get(revision, revision)]

    def files(self, repo_id: str, kind: str = "models", revision: str = "main") -> dict[str, bytes]:
        """What the repository holds at `revision`: {path: content}."""
        return {path: self.read(oid) for path, (oid, _) in sorted(self.tree(repo_id, kind, revision).items())}

    def lfs_paths(self, repo_id: str, kind: str = "models", revision: str = "main") -> set[str]:
        return {path for path, (_, lfs) in self.tree(repo_id, kind, revision).items() if lfs}

    def read(self, oid: str) -> bytes:
        return (self.objects / oid).read_bytes()

    def store(self, content: bytes) -> str:
        oid = hashlib.sha256(content).hexdigest()
        (self.objects / oid).write_bytes(content)
        return oid


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection ends its thread

    def log_message(self, *args):
        pass

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def send(self, status: int, content: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    def dispatch(self) -> None:
        method, body = self.command, self.body()
        url = urlsplit(self.path)
        for route_method, pattern, name in ROUTES:
            if method == route_method and (match := re.fullmatch(pattern, url.path)):
                break
        else:
            self.server.unknown.append(f"{method} {url.path}")
            return self.send(404, json.dumps({"error": f"stand-in Hub: no endpoint {method} {url.path}"}).encode())
        arguments = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
        if "prefix" in match.groupdict():
            arguments["kind"] = (arguments.pop("prefix", "") or "models/").rstrip("/")
        try:
            with self.server.lock:
                self.server.calls.append(name)
                if name in self.server.failures:
                    raise HubError(*self.server.failures[name])
                self.check_token(write=name not in ("agent_harnesses", "info", "tree", "resolve", "lfs_upload"))
                status, payload, headers = getattr(self, name)(body, **arguments)
        except HubError as error:
            headers = {"X-Error-Message": str(error)} | ({"X-Error-Code": error.code} if error.code else {})
            return self.send(error.status, json.dumps({"error": str(error), **error.fields}).encode(), headers)
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send(status, content, headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = dispatch

    def check_token(self, write: bool) -> None:
        """As the Hub: a wrong token is refused on every endpoint, and writing needs the token."""
        authorization = self.headers.get("Authorization")
        if authorization != f"Bearer {self.server.token}" and (authorization or write):
            raise HubError(401, "Invalid credentials in Authorization header")

    def repo(self, kind: str, repo_id: str, revision: str | None = None) -> tuple[Repo, str | None]:
        """The repository and the commit `revision` (a branch or commit id) names; 404s as the Hub answers them."""
        repo = self.server.repos.get(f"{kind}/{repo_id}")
        if repo is None or repo.private and self.headers.get("Authorization") is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        revision = revision or "main"
        commit = repo.branches.get(revision, revision if revision in repo.trees else None)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo, commit

    def url(self, kind: str, repo_id: str) -> str:
        return f"{self.server.endpoint}/{'' if kind == 'models' else kind + '/'}{repo_id}"

    def create(self, body):
        request = json.loads(body)
        kind = f"{request.get('type', 'model')}s"
        repo_id = f"{request['organization'] or 'user'}/{request['name']}"
        if f"{kind}/{repo_id}" in self.server.repos:
            raise HubError(409, "You already created this repo", url=self.url(kind, repo_id))
        if kind == "spaces" and request.get("sdk") not in SPACE_SDKS:
            raise HubError(400, f"A Space needs an sdk, one of {', '.join(SPACE_SDKS)}")
        private = request.get("visibility", "public") == "private"
        first = hashlib.sha1(f"{kind}/{repo_id}".encode()).hexdigest()  # empty (the Hub's holds a .gitattributes)
        self.server.repos[f"{kind}/{repo_id}"] = Repo(kind, private, request.get("sdk"), {"main": first}, {first: {}})
        return 200, {"url": self.url(kind, repo_id), "name": repo_id}, {}

    def validate_yaml(self, body):
        request = json.loads(body)
        try:
            (SpaceCard if request.get("repoType") == "space" else ModelCard)(request["content"],
                                                                              ignore_metadata_errors=False)
        except ValueError as error:
            raise HubError(400, f"Invalid README metadata: {error}")
        return 200, {"errors": [], "warnings": []}, {}

    def agent_harnesses(self, body):
        """The registry the client reads to name an AI agent in its user agent; empty: no agent to detect."""
        return 200, {"standardEnvVars": [], "harnesses": {}}, {}

    def info(self, body, kind, repo, revision=None):
        entry, commit = self.repo(kind, repo, revision)
        siblings = [{"rfilename": path} for path in sorted(entry.trees[commit])]
        return 200, {"id": repo, "sha": commit, "private": entry.private, "sdk": entry.sdk, "siblings": siblings}, {}

    def tree(self, body, kind, repo, revision):
        entry, commit = self.repo(kind, repo, revision)
        listing = []
        for path, (oid, lfs) in sorted(entry.trees[commit].items()):
            size = (self.server.objects / oid).stat().st_size
            item = {"type": "file", "path": path, "size": size, "oid": git_blob_id(self.server.read(oid))}
            if lfs:
                pointer = lfs_pointer(oid, size)
                item |= {"oid": git_blob_id(pointer), "lfs": {"oid": oid, "size": size, "pointerSize": len(pointer)}}
            listing.append(item)
        return 200, listing, {}

    def branch(self, body, kind, repo, revision):
        entry, _ = self.repo(kind, repo)
        if revision in entry.branches:
            raise HubError(409, f"Branch {revision} already exists")
        entry.branches[revision] = self.repo(kind, repo, json.loads(body).get("startingPoint", "main"))[1]
        return 200, {}, {}

    def preupload(self, body, kind, repo, revision):
        entry, commit = self.repo(kind, repo, revision)
        tree = entry.trees[commit]
        files = []
        for file in json.loads(body)["files"]:
            binary = b"\0" in base64.b64decode(file["sample"])
            lfs = file["path"].endswith(LFS_SUFFIXES) or binary or file["size"] >= LFS_MIN_SIZE
            oid, stored_lfs = tree.get(file["path"], (None, False))
            remote_oid = oid if stored_lfs else oid and git_blob_id(self.server.read(oid))
            files.append({"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": remote_oid})
        return 200, {"files": files}, {}

    def lfs_batch(self, body, kind, repo):
        self.repo(kind, repo)
        request = json.loads(body)
        if request["operation"] != "upload" or "basic" not in request["transfers"]:
            raise HubError(400, "Only basic LFS uploads are served")
        objects = []
        for obj in request["objects"]:
            href = f"{self.server.endpoint}/lfs-storage/{obj['oid']}"
            actions = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
            objects.append({"oid": obj["oid"], "size": obj["size"], "authenticated": True,
                            **({} if obj["oid"] in self.server.verified_lfs else {"actions": actions})})
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {}

    def lfs_upload(self, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "The uploaded content does not match its sha256")
        self.server.store(body)
        return 200, b"", {}

    def lfs_verify(self, body, oid):
        request = json.loads(body)
        path = self.server.objects / oid
        if request["oid"] != oid or not path.is_file() or path.stat().st_size != request["size"]:
            raise HubError(404, f"LFS object {oid} of {request['size']} bytes was not uploaded")
        self.server.verified_lfs.add(oid)
        return 200, {}, {}

    def commit(self, body, kind, repo, revision):
        entry, parent = self.repo(kind, repo, revision)
        lines = [json.loads(line) for line in body.decode().splitlines() if line]
        if lines[0]["key"] != "header":
            raise HubError(400, "A commit starts with its header")
        tree = dict(entry.trees[parent])
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                tree[value["path"]] = (self.server.store(base64.b64decode(value["content"])), False)
            elif key == "lfsFile":
                if value["oid"] not in self.server.verified_lfs:
                    raise HubError(422, f"The LFS object of {value['path']} was never uploaded")
                tree[value["path"]] = (value["oid"], True)
            else:
                raise HubError(400, f"stand-in Hub: unknown commit operation {key}")
        commit = hashlib.sha1(json.dumps([parent, sorted(tree.items()), lines[0]["value"]]).encode()).hexdigest()
        entry.trees[commit] = tree
        entry.branches[revision] = commit
        self.server.commits.append((f"{kind}/{repo}", revision, lines[0]["value"]["summary"]))
        return 200, {"commitUrl": f"{self.url(kind, repo)}/commit/{commit}", "commitOid": commit,
                     "pullRequestUrl": None}, {}

    def resolve(self, body, kind, repo, revision, path):
        entry, commit = self.repo(kind, repo, revision)
        if path not in entry.trees[commit]:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        oid, lfs = entry.trees[commit][path]
        content = self.server.read(oid)
        headers = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
        if lfs:
            pointer = lfs_pointer(oid, len(content))
            headers |= {"ETag": f'"{git_blob_id(pointer)}"', "X-Linked-Etag": f'"{oid}"',
                        "X-Linked-Size": str(len(content))}
        else:
            headers["ETag"] = f'"{git_blob_id(content)}"'
        return 200, content, headers
