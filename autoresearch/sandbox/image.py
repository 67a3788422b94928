"""Which image a docker run uses: `sandbox.image` when it exists locally (built from
container/Dockerfile; its labels say which Python to run), else the no-pull local image, a root
filesystem of a few files imported once, that runs the host's interpreter and venv bind-mounted
read-only."""
from __future__ import annotations

import hashlib
import io
import tarfile

from .host import _USER_ENV, NSSWITCH, _passwd_group, _root_symlinks, host_runtime, sandbox_ids
from .spec import LOCAL_IMAGE_REPO, Runtime


def local_image_tar() -> tuple[str, bytes]:
    """The no-pull image as a root-filesystem tar, and its content-addressed tag:
    /etc/passwd and /etc/group naming the sandbox user, nsswitch.conf (names from files: no
    DNS without a network), the host's /lib-style links,
    empty /tmp. Everything else comes from read-only bind mounts at run time."""
    passwd, group = _passwd_group()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, data: bytes = b"", mode: int = 0o644, link: str = "") -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, 0, link
            ti.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        for d in ("etc", "tmp", "usr"):
            add(d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        add("etc/passwd", tarfile.REGTYPE, passwd)
        add("etc/group", tarfile.REGTYPE, group)
        add("etc/nsswitch.conf", tarfile.REGTYPE, NSSWITCH)      # docker writes /etc/hosts itself
        for link, dest in sorted(_root_symlinks().items()):
            if link == "/sbin":     # docker mounts its init at /sbin/docker-init: keep a real dir
                add("sbin", tarfile.DIRTYPE, mode=0o755)
            else:
                add(link.lstrip("/"), tarfile.SYMTYPE, mode=0o777, link=dest)
    data = buf.getvalue()
    return f"{LOCAL_IMAGE_REPO}:{hashlib.sha256(data).hexdigest()[:12]}", data



def resolve_image(client, image: str | None) -> tuple[str, Runtime, str]:
    """(image id, runtime, tag): the configured image when it exists locally, else the local one
    (imported once; cheap when it exists)."""
    import docker.errors
    if image and not image.startswith(LOCAL_IMAGE_REPO + ":"):
        try:
            img = client.images.get(image)
            labels = img.labels or {}
            if labels.get("org.autoresearch.runtime") != "host":
                py = labels.get("org.autoresearch.python", "python3")
                path = labels.get("org.autoresearch.path", "/usr/local/bin:/usr/bin:/bin")
                return img.id, Runtime(py, [], {"PATH": path, **_USER_ENV}), image
        except docker.errors.ImageNotFound:
            pass
    tag, data = local_image_tar()
    try:
        img = client.images.get(tag)
    except docker.errors.ImageNotFound:
        uid, gid = sandbox_ids()
        client.api.import_image_from_data(
            data, repository=tag.split(":")[0], tag=tag.split(":")[1],
            changes=[f"USER {uid}:{gid}", "LABEL org.autoresearch.runtime=host", "WORKDIR /tmp"])
        img = client.images.get(tag)
    return img.id, host_runtime(), tag
