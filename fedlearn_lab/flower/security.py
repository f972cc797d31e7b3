"""Keys and certificates for a Flower run that only invited devices join.

:func:`make_keys` generates, with the ``cryptography`` package, into one folder:

- a certificate authority (``ca.pem``, ``ca.key``) made for this run;
- the SuperLink's TLS certificate for 127.0.0.1 and ``localhost``, signed by it
  (``server.pem``, ``server.key``): a device that holds ``ca.pem`` can check it is
  talking to this SuperLink, one that does not cannot connect;
- one key pair per SuperNode on demand (:meth:`Keys.node`): an ECDSA P-384 key in
  OpenSSH format, as Flower's SuperNode authentication wants. The SuperLink admits
  a SuperNode only once its public key is registered (``flwr supernode register``).

Private keys are written readable by their owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAYS = 7  # certificates of a run on this machine need not last


@dataclass(frozen=True)
class Keys:
    """Where :func:`make_keys` wrote a run's certificates and keys."""

    folder: Path

    @property
    def ca(self) -> Path:
        """The CA's certificate: what a device must hold to trust the SuperLink."""
        return self.folder / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def node(self, name: str) -> tuple[Path, Path]:
        """SuperNode ``name``'s private and public key files (made on first use)."""
        private, public = self.folder / f"{name}.key", self.folder / f"{name}.pub"
        if not private.exists():
            key = ec.generate_private_key(ec.SECP384R1())
            _write_private(private, key, serialization.PrivateFormat.OpenSSH)
            public.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
                )
            )
        return private, public


def make_keys(folder: str | Path) -> Keys:
    """A new CA and a SuperLink certificate for 127.0.0.1, in ``folder`` (which must
    not hold keys already: a run's keys are never overwritten)."""
    keys = Keys(Path(folder))
    if keys.ca.exists():
        raise FileExistsError(f"{folder} already holds keys: use a new folder")
    keys.folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("fedlearn_lab run CA")
    # The extensions a strict verifier wants (OpenSSL's -x509_strict, Python 3.13's
    # default): key usages, and the key identifiers that chain the two.
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    # The SuperLink's own SuperExec connects to 127.0.0.1: the IP must be named.
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    server = (
        _builder(_name("127.0.0.1"), ca_name, server_key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    keys.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    keys.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_private(keys.folder / "ca.key", ca_key, serialization.PrivateFormat.PKCS8)
    _write_private(keys.server_key, server_key, serialization.PrivateFormat.PKCS8)
    return keys


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    """A CA signs certificates; a server signs its TLS handshakes."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_DAYS))
    )


def _write_private(
    path: Path, key: ec.EllipticCurvePrivateKey, form: serialization.PrivateFormat
) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, form, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
