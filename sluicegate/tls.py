"""A certificate for the local TLS listener, made at start-up.

AWS samples build their @connections endpoint as `https://{domainName}/{stage}`; serving them
unchanged takes a TLS listener whose certificate their boto3 clients trust. We make a private
certificate authority and a server certificate for 127.0.0.1 / localhost signed by it, and a CA
bundle for `AWS_CA_BUNDLE`: that authority plus the roots trusted before (a bundle given, else
the usual public roots), so that other HTTPS calls still verify.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIFETIME = datetime.timedelta(days=7)
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sluicegate local CA")])


@dataclass(frozen=True)
class LocalCertificate:
    """Files written for one TLS listener."""

    cert_file: Path  # the server certificate, then the authority's
    key_file: Path
    ca_file: Path  # the authority alone
    ca_bundle: Path  # the authority plus the usual public roots: for AWS_CA_BUNDLE


def make_certificate(
    directory: Path, hosts: list[str], roots: Path | None = None
) -> LocalCertificate:
    """Write a CA and a server certificate for `hosts` (IP addresses or DNS names), and the CA
    bundle: the CA, then `roots` (a PEM bundle) or the usual public roots."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_id = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        _builder(CA_NAME, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(ca_id, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    leaf = (
        _builder(subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_id), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_pem = ca.public_bytes(pem)
    files = LocalCertificate(
        cert_file=directory / "server.pem",
        key_file=directory / "server.key",
        ca_file=directory / "ca.pem",
        ca_bundle=directory / "ca-bundle.pem",
    )
    files.cert_file.write_bytes(leaf.public_bytes(pem) + ca_pem)
    files.key_file.touch(mode=0o600)
    private = serialization.PrivateFormat.PKCS8
    files.key_file.write_bytes(key.private_bytes(pem, private, serialization.NoEncryption()))
    files.ca_file.write_bytes(ca_pem)
    files.ca_bundle.write_bytes(ca_pem + b"\n" + _roots(roots))
    return files


def _builder(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(CA_NAME)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a little clock skew is fine
        .not_valid_after(now + LIFETIME)
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
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


def _names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _roots(given: Path | None) -> bytes:
    """The bundle given, else the roots botocore trusts by default (certifi's), else the
    system's."""
    if given is not None and given.is_file():
        return given.read_bytes()
    try:
        import certifi

        return Path(certifi.where()).read_bytes()
    except ImportError:
        cafile = ssl.get_default_verify_paths().cafile
        return Path(cafile).read_bytes() if cafile else b""
