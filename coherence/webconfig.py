"""The exporter's web configuration: the Prometheus exporter-toolkit file format (the one
node_exporter's `--web.config.file` takes), for TLS and basic authentication on /metrics.

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
    basic_auth_users:
      prometheus: $2b$12$...         # bcrypt hashes (htpasswd -nBC 12 "" | tr -d ':\\n')

``load(path)`` returns a validated WebConfig or raises WebConfigError with one line naming the
key; ``WebConfigFile`` re-reads the file (and the certificate files it names) when they change,
so a renewed certificate is served without a restart, as exporter-toolkit does.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["BasicAuth", "TlsSettings", "WebConfig", "WebConfigError", "WebConfigFile", "load"]

log = logging.getLogger(__name__)

# exporter-toolkit's names (Go's crypto/tls) and what Python's ssl module makes of them.
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# Go's tls.ClientAuthType names; the two that accept a certificate without verifying it have
# no equivalent in OpenSSL's server modes (and exporter-toolkit calls them insecure).
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
# The response headers exporter-toolkit lets a web config set (http_server_config.headers).
ALLOWED_HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
                   "X-XSS-Protection", "Strict-Transport-Security")
# Keys of the format that need Go's TLS stack (cipher and curve names): refused by name rather
# than ignored, so that nobody believes a restriction is in force when it is not.
UNSUPPORTED_TLS_KEYS = {
    "cipher_suites": "Go cipher-suite names; coherence uses OpenSSL's defaults for TLS 1.2 and 1.3",
    "curve_preferences": "Go curve names; coherence uses OpenSSL's defaults",
    "cert": "an inline certificate; use cert_file",
    "key": "an inline key; use key_file",
}
TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "client_allowed_sans",
            "min_version", "max_version", "prefer_server_cipher_suites")
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# bcrypt runs even for a user that does not exist, against this hash (of a random string, cost
# 10), so that the time taken does not tell which users exist.
_DUMMY_HASH = b"$2b$10$J3IapvwEXiZe.CuwO5IcvOY6p8o2.lyw0Hia46LODDnySw1qtDl1O"
# Successful (user, password) checks kept, so that a scrape every second does not cost a bcrypt
# hash every second (~50-250 ms of CPU at the usual costs); keyed with the hash, so a changed
# hash is checked afresh. A failed check is never cached.
AUTH_CACHE_SIZE = 64


class WebConfigError(Exception):
    """An invalid web configuration; ``str(err)`` is one line naming the file and the key."""


@dataclass(frozen=True)
class TlsSettings:
    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: Optional[str] = None
    client_allowed_sans: Tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    prefer_server_cipher_suites: bool = True

    def files(self) -> Tuple[str, ...]:
        return tuple(f for f in (self.cert_file, self.key_file, self.client_ca_file) if f)

    def context(self) -> ssl.SSLContext:
        """A server-side SSLContext of these settings; WebConfigError if a file will not load."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        ctx.maximum_version = TLS_VERSIONS[self.max_version]
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        for key in ("cert_file", "key_file", "client_ca_file"):
            name = getattr(self, key)
            if name:
                try:
                    with open(name, "rb"):
                        pass
                except FileNotFoundError:
                    raise WebConfigError(f"tls_server_config.{key}: {name}: no such file") from None
                except OSError as err:
                    raise WebConfigError(f"tls_server_config.{key}: {name}: "
                                         f"{(err.strerror or str(err)).lower()}") from None
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as err:
            raise WebConfigError(f"tls_server_config: cannot load cert_file {self.cert_file} with "
                                 f"key_file {self.key_file}: {_ssl_reason(err)}") from None
        ctx.verify_mode = CLIENT_AUTH[self.client_auth_type]
        if self.client_ca_file:
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except (ssl.SSLError, OSError) as err:
                raise WebConfigError(f"tls_server_config.client_ca_file: cannot load "
                                     f"{self.client_ca_file}: {_ssl_reason(err)}") from None
        return ctx

    def allows(self, peer: Optional[Mapping[str, Any]]) -> bool:
        """Whether a verified client certificate has one of client_allowed_sans (any, if none
        are listed): DNS names, IP addresses, e-mail addresses or URIs, matched exactly."""
        if not self.client_allowed_sans:
            return True
        sans = {value for _kind, value in (peer or {}).get("subjectAltName", ())}
        return any(san in sans for san in self.client_allowed_sans)


@dataclass(frozen=True)
class WebConfig:
    path: Optional[str] = None
    tls: Optional[TlsSettings] = None
    users: Tuple[Tuple[str, str], ...] = ()      # (user, bcrypt hash)
    headers: Tuple[Tuple[str, str], ...] = ()    # added to every response

    def files(self) -> Tuple[str, ...]:
        """Every file this configuration reads: itself and the TLS files."""
        own = (self.path,) if self.path else ()
        return own + (self.tls.files() if self.tls else ())

    def context(self) -> Optional[ssl.SSLContext]:
        return self.tls.context() if self.tls else None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


def _ssl_reason(err: BaseException) -> str:
    if isinstance(err, ssl.SSLError) and err.reason:
        return str(err.reason).lower().replace("_", " ")
    return getattr(err, "strerror", None) or str(err)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise WebConfigError(f"{where} must be a mapping of keys, got {type(value).__name__}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise WebConfigError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _tls(data: Mapping[str, Any], base: str) -> Optional[TlsSettings]:
    for key in data:
        if key in UNSUPPORTED_TLS_KEYS:
            raise WebConfigError(f"tls_server_config.{key} is not supported by coherence "
                                 f"({UNSUPPORTED_TLS_KEYS[key]}): remove it")
        if key not in TLS_KEYS:
            raise WebConfigError(f"tls_server_config: unknown key {key!r} "
                                 f"(known: {', '.join(TLS_KEYS)})")
    if not any(data.get(k) for k in TLS_KEYS):
        return None                 # an empty section: plain HTTP, as exporter-toolkit serves
    for key in ("cert_file", "key_file"):
        if not data.get(key):
            raise WebConfigError(f"tls_server_config.{key} is missing")
    values: Dict[str, Any] = {}
    for key in ("cert_file", "key_file", "client_ca_file"):
        if data.get(key) is not None:
            values[key] = os.path.join(base, _string(data[key], f"tls_server_config.{key}"))
    auth = data.get("client_auth_type", "NoClientCert") or "NoClientCert"
    if auth in UNSUPPORTED_CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config.client_auth_type {auth} is not supported (it "
                             "accepts a certificate without verifying it): use "
                             "RequireAndVerifyClientCert or VerifyClientCertIfGiven")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config.client_auth_type: {auth!r} is not one of "
                             f"{', '.join(CLIENT_AUTH)}")
    if auth != "NoClientCert" and "client_ca_file" not in values:
        raise WebConfigError(f"tls_server_config.client_auth_type {auth} needs client_ca_file")
    values["client_auth_type"] = auth
    sans = data.get("client_allowed_sans") or ()
    if not isinstance(sans, (list, tuple)) or not all(isinstance(s, str) and s for s in sans):
        raise WebConfigError("tls_server_config.client_allowed_sans must be a list of strings")
    if sans and auth == "NoClientCert":
        raise WebConfigError("tls_server_config.client_allowed_sans needs a verified client "
                             "certificate: set client_auth_type to RequireAndVerifyClientCert")
    values["client_allowed_sans"] = tuple(sans)
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        version = data.get(key) or default
        if version not in TLS_VERSIONS:
            raise WebConfigError(f"tls_server_config.{key}: {version!r} is not one of "
                                 f"{', '.join(TLS_VERSIONS)}")
        values[key] = version
    if TLS_VERSIONS[values["min_version"]] > TLS_VERSIONS[values["max_version"]]:
        raise WebConfigError("tls_server_config: min_version is above max_version")
    prefer = data.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError("tls_server_config.prefer_server_cipher_suites must be true or false")
    values["prefer_server_cipher_suites"] = prefer
    return TlsSettings(**values)


def _users(data: Mapping[str, Any]) -> Tuple[Tuple[str, str], ...]:
    users = []
    for user, hashed in data.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"basic_auth_users: {user!r} is not a user name (a non-empty "
                                 "string without ':')")
        if not isinstance(hashed, str) or _BCRYPT.fullmatch(hashed) is None:
            raise WebConfigError(f"basic_auth_users.{user}: not a bcrypt hash ($2b$<cost>$ and 53 "
                                 "characters; make one with `htpasswd -nBC 12 \"\" | tr -d ':\\n'`)")
        users.append((user, hashed))
    return tuple(users)


def _headers(data: Mapping[str, Any]) -> Tuple[Tuple[str, str], ...]:
    out = []
    for name, value in data.items():
        if name not in ALLOWED_HEADERS:
            raise WebConfigError(f"http_server_config.headers: {name!r} cannot be set (allowed: "
                                 f"{', '.join(ALLOWED_HEADERS)})")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise WebConfigError(f"http_server_config.headers.{name} must be one line of text")
        out.append((name, value))
    return tuple(out)


def parse(data: Any, path: Optional[str] = None) -> WebConfig:
    """A WebConfig from the file's parsed YAML; relative file names are taken from the
    directory of ``path``. WebConfigError (without the file name) when anything is wrong."""
    data = _mapping(data, "the file")
    known = ("tls_server_config", "http_server_config", "basic_auth_users")
    for key in data:
        if key not in known:
            raise WebConfigError(f"unknown key {key!r} (known: {', '.join(known)})")
    base = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    tls = _tls(_mapping(data.get("tls_server_config"), "tls_server_config"), base)
    http = _mapping(data.get("http_server_config"), "http_server_config")
    for key in http:
        if key not in ("http2", "headers"):
            raise WebConfigError(f"http_server_config: unknown key {key!r} (known: http2, headers)")
    if not isinstance(http.get("http2", True), bool):
        raise WebConfigError("http_server_config.http2 must be true or false")
    headers = _headers(_mapping(http.get("headers"), "http_server_config.headers"))
    users = _users(_mapping(data.get("basic_auth_users"), "basic_auth_users"))
    return WebConfig(path=path, tls=tls, users=users, headers=headers)


def load(path: str) -> WebConfig:
    """Read, parse and validate the web config at ``path`` (its certificate and key loaded once,
    so that a file that will not load is found now); WebConfigError with one line otherwise."""
    import yaml
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise WebConfigError(f"web config {path}: no such file") from None
    except PermissionError:
        raise WebConfigError(f"web config {path}: permission denied") from None
    except IsADirectoryError:
        raise WebConfigError(f"web config {path}: is a directory") from None
    except OSError as err:
        raise WebConfigError(f"web config {path}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise WebConfigError(f"web config {path}: not valid YAML{at}: {problem}") from None
    try:
        config = parse(data, path)
        config.context()
    except WebConfigError as err:
        raise WebConfigError(f"web config {path}: {err}") from None
    return config


class WebConfigFile:
    """The web config at ``path``, read again when it or one of its TLS files changes (checked
    with stat() at most once per ``check_every_s``): ``current()`` gives the config and its
    SSLContext. A file that became invalid is reported once in the log, and ``current()``
    raises WebConfigError until it is fixed: the server then refuses every request (500)
    rather than fall back to looser settings."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._config = load(path)
        self._context = self._config.context()
        self._error: Optional[str] = None
        self._stamp = self._stat()

    def _stat(self) -> Tuple[Tuple[str, float, int, int], ...]:
        out = []
        for name in (self.path, *self._config.files()):
            try:
                st = os.stat(name)
                out.append((name, st.st_mtime, st.st_size, st.st_ino))
            except OSError:
                out.append((name, -1.0, -1, -1))
        return tuple(out)

    def current(self) -> Tuple[WebConfig, Optional[ssl.SSLContext]]:
        with self._lock:
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    config = load(self.path)
                    self._config, self._context = config, config.context()
                    self._stamp = self._stat()          # the new config may name other files
                    if self._error is not None:
                        log.warning("%s is valid again: serving with it", self.path)
                    self._error = None
                except WebConfigError as err:
                    self._error = str(err)
                    log.error("%s; every request is refused until it is fixed", err)
            if self._error is not None:
                raise WebConfigError(self._error)
            return self._config, self._context


class BasicAuth:
    """Checks `Authorization: Basic ...` against bcrypt hashes. bcrypt is slow on purpose, so
    checks run one at a time (a flood of bad passwords costs at most one core) and a successful
    (user, password, hash) is remembered."""

    def __init__(self) -> None:
        self._ok: Dict[bytes, bool] = {}
        self._one_at_a_time = threading.Lock()

    @staticmethod
    def credentials(header: Optional[str]) -> Optional[Tuple[str, bytes]]:
        """(user, password) from a Basic Authorization header, or None."""
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            raw = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, sep, password = raw.partition(b":")
        if not sep:
            return None
        try:
            return user.decode("utf-8"), password
        except UnicodeDecodeError:
            return None

    def check(self, users: Tuple[Tuple[str, str], ...], header: Optional[str]) -> bool:
        import bcrypt
        creds = self.credentials(header)
        if creds is None:
            return False
        user, password = creds
        hashed = dict(users).get(user)
        key = hashlib.sha256(b"\0".join([user.encode(), password, (hashed or "").encode()])).digest()
        if hashed is not None and key in self._ok:
            return True
        with self._one_at_a_time:
            try:
                ok = bcrypt.checkpw(password, hashed.encode() if hashed else _DUMMY_HASH)
            except ValueError:
                ok = False
        ok = ok and hashed is not None
        if ok:
            if len(self._ok) >= AUTH_CACHE_SIZE:
                self._ok.clear()
            self._ok[key] = True
        return ok
