"""The web config (exporter-toolkit's format): what it accepts, one line naming the key for what
it refuses, basic auth against bcrypt hashes, and a file read again when it changes."""
import base64
import os
import ssl

import bcrypt
import pytest

from _tls import Authority
from coherence.webconfig import BasicAuth, WebConfigError, WebConfigFile, load, parse

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()     # cost 4: fast tests


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return Authority(str(tmp_path_factory.mktemp("ca")))


@pytest.fixture(scope="module")
def server_cert(ca):
    return ca.issue("server", dns=["localhost"], ips=["127.0.0.1"])


def write(tmp_path, text, name="web.yml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_an_empty_file_serves_plain_http_without_auth(tmp_path):
    config = load(write(tmp_path, ""))
    assert config.tls is None and config.users == () and config.scheme == "http"
    assert config.context() is None


def test_tls_and_users_with_paths_relative_to_the_file(tmp_path, server_cert):
    crt, key = server_cert
    os.makedirs(tmp_path / "certs")
    for src in (crt, key):
        os.link(src, tmp_path / "certs" / os.path.basename(src))
    path = write(tmp_path, f"""
tls_server_config:
  cert_file: certs/{os.path.basename(crt)}
  key_file: certs/{os.path.basename(key)}
  min_version: TLS13
basic_auth_users:
  prometheus: {HASH}
http_server_config:
  headers:
    Strict-Transport-Security: max-age=31536000
""")
    config = load(path)
    assert config.tls is not None and config.scheme == "https"
    assert config.tls.cert_file == str(tmp_path / "certs" / os.path.basename(crt))
    assert config.users == (("prometheus", HASH),)
    assert config.headers == (("Strict-Transport-Security", "max-age=31536000"),)
    ctx = config.context()
    assert isinstance(ctx, ssl.SSLContext) and ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize("text, message", [
    ("- a list\n", "the file must be a mapping"),
    ("tls_server_config: {cert_file: x.crt}\n", "tls_server_config.key_file is missing"),
    ("tls_server_config: {key_file: x.key}\n", "tls_server_config.cert_file is missing"),
    ("tls_server_config: {cert_file: none.crt, key_file: none.key}\n", "none.crt: no such file"),
    ("tls_server_config: {cert_file: a, key_file: b, cipher_suites: [TLS_AES_128_GCM_SHA256]}\n",
     "tls_server_config.cipher_suites is not supported"),
    ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS9}\n",
     "min_version: 'TLS9' is not one of TLS10, TLS11, TLS12, TLS13"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAnyClientCert}\n",
     "RequireAnyClientCert is not supported"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAndVerifyClientCert}\n",
     "needs client_ca_file"),
    ("tls_server_config: {cert_file: a, key_file: b, client_allowed_sans: [x]}\n",
     "client_allowed_sans needs a verified client certificate"),
    ("tls_server_config: {cert_file: a, key_file: b, surprise: 1}\n",
     "tls_server_config: unknown key 'surprise'"),
    ("basic_auth_users: {prometheus: plaintext}\n", "basic_auth_users.prometheus: not a bcrypt hash"),
    ("basic_auth_users: [prometheus]\n", "basic_auth_users must be a mapping"),
    ("http_server_config: {headers: {Server: nginx}}\n", "'Server' cannot be set"),
    ("http_server_config: {http3: true}\n", "unknown key 'http3'"),
    ("web: {}\n", "unknown key 'web'"),
    ("tls_server_config: [\n", "not valid YAML at line 2"),
])
def test_a_bad_file_is_one_line_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(WebConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"web config {path}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_missing_or_unreadable_file(tmp_path):
    with pytest.raises(WebConfigError, match="no such file"):
        load(str(tmp_path / "absent.yml"))
    with pytest.raises(WebConfigError, match="is a directory"):
        load(str(tmp_path))


def test_a_key_that_does_not_match_its_certificate(tmp_path, ca, server_cert):
    _, other_key = ca.issue("other", dns=["other"])
    path = write(tmp_path, f"tls_server_config: {{cert_file: {server_cert[0]}, key_file: {other_key}}}\n")
    with pytest.raises(WebConfigError, match="cannot load cert_file .* key values mismatch"):
        load(path)


def test_basic_auth_checks_bcrypt_and_remembers_success():
    auth, users = BasicAuth(), (("prometheus", HASH),)
    assert auth.check(users, basic("prometheus", "s3cret"))
    assert auth.check(users, basic("prometheus", "s3cret"))        # from the cache
    assert not auth.check(users, basic("prometheus", "wrong"))
    assert not auth.check(users, basic("nobody", "s3cret"))
    for header in (None, "", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert not auth.check(users, header)
    # a changed hash is checked afresh, not taken from the cache
    other = bcrypt.hashpw(b"new", bcrypt.gensalt(4)).decode()
    assert not auth.check((("prometheus", other),), basic("prometheus", "s3cret"))
    assert auth.check((("prometheus", other),), basic("prometheus", "new"))


def test_credentials_keep_a_colon_in_the_password():
    assert BasicAuth.credentials(basic("u", "a:b")) == ("u", b"a:b")


def test_parse_without_a_file_takes_paths_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse({"tls_server_config": {}}).tls is None
    with pytest.raises(WebConfigError, match="tls_server_config.key_file is missing"):
        parse({"tls_server_config": {"cert_file": "x"}})


def test_the_file_is_read_again_when_it_changes(tmp_path):
    path = write(tmp_path, f"basic_auth_users: {{a: {HASH}}}\n")
    web = WebConfigFile(path)
    assert web.current()[0].users == (("a", HASH),)
    os.utime(path, (1, 1))                    # an edit within the same second still shows
    with open(path, "w") as f:
        f.write(f"basic_auth_users: {{b: {HASH}}}\n")
    assert web.current()[0].users == (("b", HASH),)
    with open(path, "w") as f:
        f.write("basic_auth_users: {b: oops}\n")
    for _ in range(2):                        # refused until fixed, not served with old settings
        with pytest.raises(WebConfigError, match="not a bcrypt hash"):
            web.current()
    with open(path, "w") as f:
        f.write("")
    assert web.current()[0].users == ()
