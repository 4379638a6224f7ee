"""auth_jwt: bearer JWTs from configured issuers (RS256, ES256, HS256), made and signed here with
the openssl command and the standard library; every rejection answers the same 401; the models
claim narrows the tenant's models; the token never reaches a backend, a log or the audit log."""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402
from gwtest import Mock, Gateway, Shared, gateway_config, pool, backend, chat, post_json, assert_error  # noqa: E402

ISS_RS = "https://idp.example.ch"
ISS_ES = "https://es.example.ch"
ISS_HS = "https://hs.example.ch"
AUD = "gotthard"
BACKEND_KEY = "backend-own-key-7f3a"
CANARY_TENANT = "canary-tenant-q8z"  # a tenant claim value that must never be echoed or logged


# --------------------------------------------------------------------------- keys and tokens


class Keys:
    def __init__(self):
        self.dir = gwtest.tempdir("gwtest-jwt-keys-")
        self.rsa = self._gen(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], "rsa")
        self.rsa2 = self._gen(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], "rsa2")
        self.ec = self._gen(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], "ec")
        self.secret = b"integration-hmac-secret-0123456789abcdef"

    def _gen(self, opts, name):
        key = os.path.join(self.dir, name + ".key.pem")
        subprocess.run(["openssl", "genpkey"] + opts + ["-out", key], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        pub = subprocess.run(["openssl", "pkey", "-in", key, "-pubout"], check=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30).stdout
        return key, pub

    def files(self):
        return {"keys/rsa.pub.pem": self.rsa[1], "keys/ec.pub.pem": self.ec[1],
                "keys/hs.secret": self.secret}


KEYS = Shared(lambda: Keys())


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def seg(obj):
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def _der_to_raw(der, size):
    """An ECDSA DER signature (SEQUENCE of two INTEGERs) as JWS wants it: r || s, fixed size."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7f)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        v = der[i + 2:i + 2 + n].lstrip(b"\0")
        out += v.rjust(size, b"\0")
        i += 2 + n
    return out


def sign(signing_input, how, key=None):
    """how: 'RS256' / 'ES256' (key = private key PEM path), 'HS256' etc. (key = secret bytes)."""
    data = signing_input.encode()
    if how.startswith("HS"):
        md = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[how]
        return hmac.new(key, data, md).digest()
    md = {"256": "-sha256", "384": "-sha384", "512": "-sha512"}[how[2:]]
    sig = subprocess.run(["openssl", "dgst", md, "-sign", key], input=data, check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30).stdout
    return _der_to_raw(sig, 32) if how == "ES256" else sig


def claims(iss=ISS_RS, **kw):
    now = int(time.time())
    c = {"iss": iss, "aud": AUD, "exp": now + 600, "iat": now - 5, "tenant": "acme"}
    for k, v in kw.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def make(header, payload, how, key):
    si = (seg(header) if isinstance(header, dict) else b64(header)) + "." + \
        (seg(payload) if isinstance(payload, dict) else b64(payload))
    return si + "." + (b64(sign(si, how, key)) if how else "")


def rs(payload=None, header=None):
    k = KEYS.get()
    return make(header or {"alg": "RS256", "typ": "JWT"}, payload or claims(), "RS256", k.rsa[0])


def es(payload=None):
    k = KEYS.get()
    return make({"alg": "ES256"}, payload or claims(iss=ISS_ES), "ES256", k.ec[0])


def hs(payload=None, header=None, secret=None):
    k = KEYS.get()
    return make(header or {"alg": "HS256"}, payload or claims(iss=ISS_HS), "HS256", secret or k.secret)


# --------------------------------------------------------------------------- the gateway


def jwt_entries():
    # Several issuers: each must name the tenants it may speak for (test_sec_auth.py).
    t = ["acme", "globex"]
    return [
        {"issuer": ISS_RS, "audience": AUD, "algorithm": "RS256", "key_file": "keys/rsa.pub.pem",
         "tenant_claim": "tenant", "tenants": t},
        {"issuer": ISS_ES, "audience": AUD, "algorithm": "ES256", "key_file": "keys/ec.pub.pem",
         "tenant_claim": "tenant", "leeway_s": 0, "tenants": t},
        {"issuer": ISS_HS, "audience": AUD, "algorithm": "HS256", "key_file": "keys/hs.secret",
         "tenant_claim": "tenant", "leeway_s": 30, "tenants": t},
    ]


def tenants():
    return [{"id": "acme", "models": ["m1", "m2"]}, {"id": "globex", "models": ["*"]}]


def _start():
    mock = Mock()
    # The failed-auth limiter is off: this file's shared gateway refuses well over its burst of
    # bad tokens from one address on purpose (the limiter: test_sec_auth.py).
    cfg = gateway_config([], tenants=tenants(), jwt=jwt_entries(),
                         audit_log={"path": "audit.log"}, auth={"failure_rate": 0},
                         pools=[pool("p1", ["m1", "m2"], [backend(mock.port, api_key_env="GW_TEST_BACKEND_KEY")]),
                                pool("p3", ["m3"], [mock.port])])
    gw = Gateway(cfg, files=KEYS.get().files(), env={"GW_TEST_BACKEND_KEY": BACKEND_KEY})
    return {"mock": mock, "gw": gw}


ENV = Shared(_start)


def env():
    e = ENV.get()
    e["mock"].reset()
    return e["mock"], e["gw"]


def bearer(tok):
    return {"Authorization": "Bearer " + tok}


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def audit_events(gw):
    out = []
    for line in read(os.path.join(gw.dir, "audit.log")).splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError("audit line is not JSON: %r" % line)
    return out


# --------------------------------------------------------------------------- tests


def test_valid_tokens_each_algorithm():
    mock, gw = env()
    for name, tok in (("RS256", rs()), ("ES256", es()), ("HS256", hs())):
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bearer(tok))
        assert r.status == 200, "%s: %s" % (name, r.describe())
    # The api-key header carries a JWT as well.
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers={"api-key": rs()})
    assert r.status == 200, "api-key header: " + r.describe()
    # kid, jku, x5u, x5c, jwk headers are ignored (nothing is fetched; the configured key decides).
    tok = rs(header={"alg": "RS256", "kid": "x", "jku": "http://127.0.0.1:1/jwks.json",
                     "x5u": "http://127.0.0.1:1/cert.pem", "x5c": ["MIIB"],
                     "jwk": {"kty": "oct", "k": b64(b"attacker")}})
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bearer(tok))
    assert r.status == 200, "jku/x5u/x5c/jwk/kid: " + r.describe()
    assert len(mock.wait_requests(5)) == 5


def test_token_never_reaches_backend():
    mock, gw = env()
    tok = rs()
    r = post_json(gw.port, "/v1/chat/completions", chat("m3"), headers=bearer(rs(claims(tenant="globex"))))
    assert r.status == 200, r.describe()
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers={"api-key": tok})
    assert r.status == 200, r.describe()
    for rec in mock.wait_requests(2):
        for k, v in rec.get("headers", []):
            assert tok not in v and tok.split(".")[2] not in v, "the token reached the backend in %s" % k
        assert not gwtest.header_values(rec, "api-key"), rec.get("headers")
        if rec.get("path") and rec.get("headers"):
            auth = gwtest.header_values(rec, "authorization")
            assert all("backend-own-key" in a for a in auth), "client credentials forwarded: %r" % auth


def test_backend_gets_its_own_key():
    """Pool p1's backend has api_key_env: it gets that key, the client's JWT never."""
    mock, gw = env()
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bearer(hs()))
    assert r.status == 200, r.describe()
    rec = mock.wait_requests(1)[0]
    assert gwtest.header_values(rec, "authorization") == ["Bearer " + BACKEND_KEY], (
        "backend authorization header: %r" % gwtest.header_values(rec, "authorization"))


def _rejections():
    k = KEYS.get()
    c = claims()
    now = int(time.time())
    big = claims(pad="x" * 9000)
    good = rs()
    flipped = good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB")
    cases = [
        ("alg none", make({"alg": "none"}, c, None, None)),
        ("alg None", make({"alg": "None"}, c, None, None)),
        ("alg NONE", make({"alg": "NONE"}, c, None, None)),
        ("alg nOnE signed", make({"alg": "nOnE"}, c, "RS256", k.rsa[0])),
        ("no alg", make({"typ": "JWT"}, c, "RS256", k.rsa[0])),
        ("HS256 with the RSA public key as secret", make({"alg": "HS256"}, c, "HS256", k.rsa[1])),
        ("RS384 header, RS256 config", make({"alg": "RS384"}, c, "RS384", k.rsa[0])),
        ("ES256 token for the RS256 issuer", make({"alg": "ES256"}, c, "ES256", k.ec[0])),
        ("signed by another RSA key", make({"alg": "RS256"}, c, "RS256", k.rsa2[0])),
        ("HS256 wrong secret", hs(secret=b"another-secret-another-secret-another-secret")),
        ("bad signature", flipped),
        ("two segments", seg({"alg": "RS256"}) + "." + seg(c)),
        ("four segments", good + ".AAAA"),
        ("bad base64url", good.replace(".", "+.", 1)),
        ("padding", seg({"alg": "RS256"}) + "=." + seg(c) + ".AAAA"),
        ("header not an object", make(b"[\"RS256\"]", c, "RS256", k.rsa[0])),
        ("payload not an object", make({"alg": "RS256"}, b"\"acme\"", "RS256", k.rsa[0])),
        ("payload not JSON", make({"alg": "RS256"}, b"{tenant: acme}", "RS256", k.rsa[0])),
        ("oversized", make({"alg": "RS256"}, big, "RS256", k.rsa[0])),
        ("expired", rs(claims(exp=now - 120))),
        ("expired beyond leeway 0", es(claims(iss=ISS_ES, exp=now - 3))),
        ("no exp", rs(claims(exp=None))),
        ("not yet valid", rs(claims(nbf=now + 600))),
        ("issued in the future", rs(claims(iat=now + 600))),
        ("wrong issuer", rs(claims(iss="https://evil.example"))),
        ("issuer of another entry", rs(claims(iss=ISS_HS))),
        ("wrong audience", rs(claims(aud="other"))),
        ("audience array without us", rs(claims(aud=["a", "b"]))),
        ("no tenant claim", rs(claims(tenant=None))),
        ("empty tenant claim", rs(claims(tenant=""))),
        ("unknown tenant", rs(claims(tenant=CANARY_TENANT))),
        ("models not an array", rs(claims(models="m1"))),
    ]
    return cases


def test_every_rejection_same_401():
    mock, gw = env()
    ref = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bearer("gk_not-a-known-key"))
    assert_error(ref, 401, "invalid_api_key")
    none = post_json(gw.port, "/v1/chat/completions", chat("m1"))
    assert_error(none, 401, "invalid_api_key")
    assert none.body == ref.body

    def one(case):
        name, tok = case
        for h in (bearer(tok), {"api-key": tok}):
            r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=h)
            assert_error(r, 401, "invalid_api_key", canary=CANARY_TENANT)
            assert r.body == ref.body, "body differs: %r vs %r" % (r.body, ref.body)
            assert tok[-20:] not in r.body.decode("latin-1")
        r = gwtest.get(gw.port, "/v1/models", headers=bearer(tok))
        assert_error(r, 401, "invalid_api_key")
        assert r.body == ref.body

    gwtest.check_all(_rejections(), one)
    assert mock.api_requests() == [], "a refused request reached the backend"


def test_audit_names_reason_never_token():
    mock, gw = env()
    k = KEYS.get()
    now = int(time.time())
    expect = [
        (rs(claims(exp=now - 120)), "jwt_expired"),
        (rs(claims(nbf=now + 600)), "jwt_not_yet_valid"),
        (make({"alg": "none"}, claims(), None, None), ("jwt_malformed", "jwt_alg")),
        (make({"alg": "NoNe"}, claims(), "RS256", k.rsa[0]), "jwt_alg"),
        # jwt_signature here: HS256 is the alg of another entry, whose secret does not verify it
        (make({"alg": "HS256"}, claims(), "HS256", k.rsa[1]), ("jwt_alg", "jwt_signature")),
        (rs()[:-4] + "AAAA", "jwt_signature"),
        (rs(claims(iss="https://evil.example")), "jwt_issuer"),
        (rs(claims(aud="x")), "jwt_audience"),
        (rs(claims(tenant=None)), "jwt_tenant"),
        # not one of the issuer's tenants (jwt[].tenants, which names configured tenants only)
        (rs(claims(tenant=CANARY_TENANT)), "jwt_tenant_not_bound"),
        ("a.b", None),  # not a JWT: left to the API-key plugin
    ]
    def failures():
        return [e for e in audit_events(gw) if e.get("event") == "auth_failure"]

    before = len(failures())
    for tok, _ in expect:
        r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bearer(tok))
        assert_error(r, 401, "invalid_api_key")
    events = gwtest.wait_for(lambda: len(failures()) >= before + len(expect) and failures()[before:],
                             what="auth_failure audit events")
    for (tok, want), ev in zip(expect, events):
        if want is None:
            assert not str(ev.get("reason", "")).startswith("jwt_"), ev
        else:
            wants = want if isinstance(want, tuple) else (want,)
            assert ev.get("reason") in wants, "expected reason %s, got %r" % (want, ev)
    logs = read(os.path.join(gw.dir, "audit.log")) + gw.stderr_text()
    for tok, _ in expect[:-1]:
        for part in tok.split("."):
            if len(part) > 8:
                assert part not in logs, "a token segment was logged"
    assert CANARY_TENANT not in logs, "a claim value was logged"
    assert KEYS.get().secret.decode() not in logs


def test_models_claim_narrows():
    mock, gw = env()
    tok = rs(claims(models=["m1"]))
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bearer(tok))
    assert r.status == 200, r.describe()
    r = post_json(gw.port, "/v1/chat/completions", chat("m2"), headers=bearer(tok))
    assert_error(r, 403, "model_not_allowed")
    r = gwtest.get(gw.port, "/v1/models", headers=bearer(tok))
    assert r.status == 200, r.describe()
    ids = sorted(m["id"] for m in r.json()["data"])
    assert ids == ["m1"], "GET /v1/models with models claim [m1]: %r" % ids
    # The claim narrows within the tenant's models, never widens them (acme has m1, m2).
    tok = rs(claims(models=["m1", "m3"]))
    r = post_json(gw.port, "/v1/chat/completions", chat("m3"), headers=bearer(tok))
    assert_error(r, 403, "model_not_allowed")
    # An empty claim allows nothing.
    tok = hs(claims(iss=ISS_HS, models=[]))
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bearer(tok))
    assert_error(r, 403, "model_not_allowed")
    # Without the claim: the tenant's own list.
    r = post_json(gw.port, "/v1/chat/completions", chat("m2"), headers=bearer(rs()))
    assert r.status == 200, r.describe()
    r = post_json(gw.port, "/v1/chat/completions", chat("m3"), headers=bearer(rs()))
    assert_error(r, 403, "model_not_allowed")
    # globex ("*") may use m3, narrowed or not.
    r = post_json(gw.port, "/v1/chat/completions", chat("m3"), headers=bearer(rs(claims(tenant="globex"))))
    assert r.status == 200, r.describe()
    r = post_json(gw.port, "/v1/chat/completions", chat("m3"),
                  headers=bearer(rs(claims(tenant="globex", models=["m1"]))))
    assert_error(r, 403, "model_not_allowed")
    assert len(mock.wait_requests(3)) == 3


def test_unknown_tenant():
    mock, gw = env()
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bearer(rs(claims(tenant="nobody"))))
    assert_error(r, 401, "invalid_api_key")
    r = post_json(gw.port, "/v1/chat/completions", chat("m1"), headers=bearer(hs(claims(iss=ISS_HS, tenant="ACME"))))
    assert_error(r, 401, "invalid_api_key")
    assert mock.api_requests() == []


def key_dir(prefix):
    """A new directory holding the key files (keys/...), for `gotthard -t` runs from it."""
    d = gwtest.tempdir(prefix)
    for name, content in KEYS.get().files().items():
        p = os.path.join(d, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(content)
    return d


def test_config_errors_name_the_path():
    k = KEYS.get()
    d = key_dir("gwtest-jwt-conf-")
    with open(os.path.join(d, "keys/short.secret"), "wb") as f:
        f.write(b"too-short-secret\n")

    def entry(**kw):
        e = {"issuer": ISS_RS, "audience": AUD, "algorithm": "RS256", "key_file": "keys/rsa.pub.pem",
             "tenant_claim": "tenant"}
        e.update(kw)
        return {k2: v for k2, v in e.items() if v is not None}

    cases = [
        (entry(algorithm="none"), "$.jwt[0].algorithm"),
        (entry(algorithm="HS256", key_file="keys/short.secret"), "$.jwt[0].key_file"),
        (entry(key_file="keys/missing.pem"), "$.jwt[0].key_file"),
        (entry(key_file="keys/hs.secret"), "$.jwt[0].key_file"),
        (entry(algorithm="ES256"), "$.jwt[0].key_file"),
        (entry(leeway_s=301), "$.jwt[0].leeway_s"),
        (entry(colour="red"), "$.jwt[0]"),
        (entry(issuer=None), "$.jwt[0].issuer"),
    ]

    def one(case):
        e, path = case
        cfg = gateway_config([gwtest.free_port()], tenants=tenants(), jwt=[e])
        p = os.path.join(d, "gotthard.json")
        with open(p, "w") as f:
            json.dump(cfg, f)
        rc, out, err = gwtest.run_gotthard(["-t", "-c", p], cwd=d)
        text = out + err
        assert rc == 1, "exit %s: %s" % (rc, text)
        assert (p + ": " + path) in text, "no line naming %s: %r" % (path, text)
        assert k.secret.decode() not in text and "too-short-secret" not in text, "a secret was printed"

    gwtest.check_all(cases, one)
    # And a good one passes.
    p = os.path.join(d, "gotthard.json")
    with open(p, "w") as f:
        json.dump(gateway_config([gwtest.free_port()], tenants=tenants(), jwt=jwt_entries()), f)
    rc, out, err = gwtest.run_gotthard(["-t", "-c", p], cwd=d)
    assert rc == 0, out + err


if __name__ == "__main__":
    gwtest.run(globals())
