"""The mesh's CA and per-identity certificates, made with the `openssl` CLI; existing ones are reused, never replaced."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .inventory import is_ip_address

RENEW_BEFORE_S = 30 * 86400


@dataclass(frozen=True)
class CertificateAuthority:
    cert: Path
    key: Path


def _openssl(*args: str, stdin: str | None = None) -> str:
    exe = shutil.which("openssl")
    if not exe:
        raise ConfigError([("openssl", None, "the openssl CLI is needed for TLS: `apt-get install openssl`")])
    proc = subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError([(f"openssl {args[0]}", " ".join(args[1:]), proc.stderr.strip() or "failed")])
    return proc.stdout


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    path.chmod(0o600)


def ensure_ca(folder: Path, mesh_name: str, days: int = 3650) -> tuple[CertificateAuthority, bool]:
    """`<folder>/ca.crt` and `ca.key` (the key never leaves the operator's machine). Returns (ca, created)."""
    ca = CertificateAuthority(cert=folder / "ca.crt", key=folder / "ca.key")
    if ca.cert.exists() and ca.key.exists():
        return ca, False
    if ca.cert.exists() or ca.key.exists():
        message = ("only one of ca.crt and ca.key exists; restore the other or remove both (and every issued "
                   "certificate) to start a new CA")
        raise ConfigError([(str(folder), None, message)])
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    _new_key(ca.key)
    _openssl("req", "-x509", "-new", "-key", str(ca.key), "-sha256", "-days", str(days),
             "-subj", f"/O=edge-moa/CN={mesh_name} CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(ca.cert))
    return ca, True


def subject_alt_names(hosts: list[str]) -> list[str]:
    """openssl's spelling: `IP:127.0.0.1`, `DNS:board-a`; duplicates removed, order kept."""
    names = []
    for host in hosts:
        name = f"IP:{host}" if is_ip_address(host) else f"DNS:{host}"
        if name not in names:
            names.append(name)
    return names


def ensure_certificate(ca: CertificateAuthority, cert: Path, key: Path, common_name: str, hosts: list[str],
                       days: int) -> bool:
    """Issue a certificate for server and client use unless a fitting one exists. Returns True if issued.

    An existing certificate that is not from this CA, lacks a needed name or expires within 30 days is an error
    for the operator to resolve (delete it to have a new one issued): nothing is overwritten silently.
    """
    sans = subject_alt_names(hosts)
    if cert.exists() and key.exists():
        problem = _unfit(ca, cert, key, sans)
        if problem:
            raise ConfigError([(str(cert), None, f"{problem}; delete {cert.name} and {key.name} to issue anew")])
        return False
    if cert.exists() or key.exists():
        raise ConfigError([(str(cert), None, f"only one of {cert.name} and {key.name} exists; remove it")])
    cert.parent.mkdir(parents=True, exist_ok=True)
    _new_key(key)
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
        _openssl("req", "-new", "-key", str(key), "-subj", f"/O=edge-moa/CN={common_name}", "-out", str(csr))
        ext.write_text(
            "[v3]\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={','.join(sans)}\n"
        )
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-set_serial",
                 str(int.from_bytes(os.urandom(8), "big")), "-days", str(days), "-sha256",
                 "-extfile", str(ext), "-extensions", "v3", "-out", str(cert))
    return True


def certificate_names(cert: Path) -> list[str]:
    text = _openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName")
    found = re.findall(r"(DNS|IP Address):([^\s,]+)", text)
    return [("IP" if kind.startswith("IP") else "DNS") + ":" + value for kind, value in found]


def _unfit(ca: CertificateAuthority, cert: Path, key: Path, sans: list[str]) -> str | None:
    exe = shutil.which("openssl") or "openssl"
    verify = subprocess.run([exe, "verify", "-CAfile", str(ca.cert), str(cert)], capture_output=True, text=True,
                            check=False)
    if verify.returncode != 0:
        return "not issued by this mesh's CA (or expired)"
    missing = [name for name in sans if name not in certificate_names(cert)]
    if missing:
        return f"lacks the names {', '.join(missing)}"
    expiring = subprocess.run([exe, "x509", "-in", str(cert), "-noout", "-checkend", str(RENEW_BEFORE_S)],
                              capture_output=True, text=True, check=False)
    if expiring.returncode != 0:
        return "expires within 30 days"
    if _public_key(cert, "x509") != _public_key(key, "pkey"):
        return f"does not belong to the key {key.name}"
    return None


def _public_key(path: Path, kind: str) -> str:
    return _openssl(kind, "-in", str(path), "-noout", "-pubkey") if kind == "x509" else \
        _openssl("pkey", "-in", str(path), "-pubout")
