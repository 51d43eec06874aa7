"""The lab's PKI: one CA, created at first start, and server certificates it signs.

Everything lives in ``<run dir>/pki`` (``D11_PKI_DIR``): ``ca.crt`` is what phones and
tests trust (``curl --cacert``, ``ssl.create_default_context(cafile=...)``); a server's
``NAME.crt``/``NAME.key`` are issued on demand with the DNS names and addresses it
answers to. ECDSA P-256 keys: quick to make and to handshake on two cores.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import ssl
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infra import write_atomic

CA_NAME = "Double-11 Lab CA"
VALIDITY = dt.timedelta(days=825)


def pki_dir(env: Mapping[str, str], run_dir: Path) -> Path:
    path = Path(env.get("D11_PKI_DIR") or run_dir / "pki")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate clock skew


def ensure_ca(directory: Path) -> tuple[Path, Path]:
    """The CA certificate and key, made on first use (under a file lock: several
    services may start at once)."""
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now())
            .not_valid_after(_now() + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_atomic(key_path, _key_pem(key), mode=0o600)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def ensure_server_cert(directory: Path, name: str, alt_names: Iterable[str]) -> tuple[Path, Path]:
    """``NAME.crt``/``NAME.key`` signed by the lab CA for ``alt_names`` (DNS names or IP
    addresses); reissued when the names asked for are not all in the existing one. A reader
    racing a reissue may see a new key beside the old certificate: :func:`load_chain`."""
    wanted = sorted(set(alt_names) | {name})
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    ca_cert_path, ca_key_path = ensure_ca(directory)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cert_path.exists() and key_path.exists():
            existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
            san = existing.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
                str(v) for v in san.get_values_for_type(x509.IPAddress)
            }
            if set(wanted) <= have and existing.not_valid_after_utc > _now():
                return cert_path, key_path
            # Several servers share a name (two gateways): the new one keeps the names the
            # others asked for, so reissues converge instead of taking turns.
            wanted = sorted(set(wanted) | have)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for alt in wanted:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(alt)))
            except ValueError:
                sans.append(x509.DNSName(alt))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now())
            .not_valid_after(_now() + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        write_atomic(key_path, _key_pem(key), mode=0o600)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def load_chain(context: ssl.SSLContext, cert: Path, key: Path, tries: int = 40) -> None:
    """``load_cert_chain``, tolerating a reissue by another process between reading the
    certificate and the key (the pair is replaced file by file): read again."""
    for attempt in range(tries):
        try:
            context.load_cert_chain(cert, key)
            return
        except ssl.SSLError:
            if attempt == tries - 1:
                raise
            time.sleep(0.05)
