/* The Redis quota scripts (Lua) and the commands around them. The Lua mirrors limiter.c:
 * same integers (all below 2^53, so exact in Lua's doubles), same order of checks, same
 * choice of the reported limit; tests/unit/test_quota.c runs one scenario table on both. */
#include "scripts.h"

#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define STR_(x) #x
#define STR(x) STR_(x)

/* Shared by the three scripts. fdiv/cdiv are floor/ceil of a/b, exact for a, b < 2^53. */
// The Lua sources keep one line of Lua per line of C: clang-format leaves them alone.
// clang-format off
static const char prelude[] =
    "local DAY = 86400000\n"
    "local DMAX = 4503599627370496\n"
    "local MAXL = 10000000000\n"
    "local MARGIN = 10000\n"
    "local CONC_RETRY = " STR(GQ_CONC_RETRY_MS) "\n"
    "local function fdiv(a, b)\n"
    "  local q = math.floor(a / b)\n"
    "  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end\n"
    "  return q\n"
    "end\n"
    "local function cdiv(a, b) return fdiv(a + b - 1, b) end\n"
    "local function clamp(v, lo, hi)\n"
    "  if v < lo then return lo elseif v > hi then return hi end\n"
    "  return v\n"
    "end\n"
    "local function fmt(n) return string.format('%d', n) end\n"
    "local function clock(o)\n"
    "  local now = tonumber(o)\n"
    "  if now and now > 0 then return now end\n"
    "  if redis.replicate_commands then redis.replicate_commands() end\n"
    "  local t = redis.call('TIME')\n"
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "end\n"
    /* The sliding window (limiter.c's w_*): hash fields s (sum), lo, hi, and one per second. */
    "local function wload(key, sec)\n"
    "  local v = redis.call('HMGET', key, 's', 'lo', 'hi')\n"
    "  return {key = key, s = tonumber(v[1]) or 0, lo = tonumber(v[2]) or sec, hi = tonumber(v[3]) or sec}\n"
    "end\n"
    "local function wprune(w, sec, W)\n"
    "  if sec < w.hi then sec = w.hi end\n"
    "  local first = sec - W + 1\n"
    "  if w.s == 0 then\n"
    "    w.lo, w.hi = sec, sec\n"
    "  elseif first > w.hi then\n"
    "    redis.call('DEL', w.key)\n"
    "    w.s, w.lo, w.hi = 0, sec, sec\n"
    "  elseif w.lo < first then\n"
    "    for x = w.lo, first - 1 do\n"
    "      local v = tonumber(redis.call('HGET', w.key, fmt(x)))\n"
    "      if v then w.s = w.s - v; redis.call('HDEL', w.key, fmt(x)) end\n"
    "    end\n"
    "    w.lo = first\n"
    "  end\n"
    "  return sec\n"
    "end\n"
    "local function wget(w, x) return tonumber(redis.call('HGET', w.key, fmt(x))) or 0 end\n"
    "local function wset(w, x, v)\n"
    "  if v == 0 then redis.call('HDEL', w.key, fmt(x)) else redis.call('HSET', w.key, fmt(x), fmt(v)) end\n"
    "end\n"
    "local function wadd(w, sec, c)\n"
    "  wset(w, sec, clamp(wget(w, sec) + c, 0, DMAX))\n"
    "  w.s = clamp(w.s + c, 0, DMAX)\n"
    "  w.hi = sec\n"
    "end\n"
    "local function wadjust(w, x, delta, sec)\n"
    "  if x >= w.lo and x <= w.hi then\n"
    "    local v = wget(w, x)\n"
    "    local nv = clamp(v + delta, 0, DMAX)\n"
    "    w.s = w.s + nv - v\n"
    "    wset(w, x, nv)\n"
    "  elseif delta > 0 then\n"
    "    wadd(w, sec, delta)\n"
    "  end\n"
    "end\n"
    "local function wfits(w, N, c)\n"
    "  if c > N then return w.s == 0 end\n"
    "  return w.s + math.max(c, 1) <= N\n"
    "end\n"
    "local function wretry(w, N, c, now, W)\n"
    "  if c <= N then\n"
    "    local need, freed = w.s + math.max(c, 1) - N, 0\n"
    "    for x = w.lo, w.hi do\n"
    "      freed = freed + wget(w, x)\n"
    "      if freed >= need then return (x + W) * 1000 - now end\n"
    "    end\n"
    "  end\n"
    "  return (w.hi + W) * 1000 - now\n"
    "end\n"
    "local function wrem(w, N) if w.s >= N then return 0 end return N - w.s end\n"
    "local function wreset(w, now, W) if w.s > 0 then return (w.hi + W) * 1000 - now end return 0 end\n"
    "local function wsave(w, now, W)\n"
    "  if w.s <= 0 then redis.call('DEL', w.key) return end\n"
    "  redis.call('HSET', w.key, 's', fmt(w.s), 'lo', fmt(w.lo), 'hi', fmt(w.hi))\n"
    "  redis.call('PEXPIRE', w.key, fmt((w.hi + W) * 1000 - now + MARGIN))\n"
    "end\n"
    "local function dload(key, day)\n"
    "  local v = redis.call('HMGET', key, 'day', 'used')\n"
    "  local sday = tonumber(v[1])\n"
    "  if sday and sday >= day then return sday, tonumber(v[2]) or 0 end\n"
    "  return day, 0\n"
    "end\n"
    "local function dsave(key, sday, used, now)\n"
    "  redis.call('HSET', key, 'day', fmt(sday), 'used', fmt(used))\n"
    "  redis.call('PEXPIRE', key, fmt((sday + 1) * DAY - now + MARGIN))\n"
    "end\n"
    "local function zexpire(key, now)\n"
    "  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')\n"
    "  if last[2] then\n"
    "    redis.call('PEXPIRE', key, fmt(math.max(tonumber(last[2]) - now, 0) + MARGIN))\n"
    "  else\n"
    "    redis.call('DEL', key)\n"
    "  end\n"
    "end\n";
// clang-format on

/* KEYS: rpm, tpm, tpd, conc per level (tenant, then the model override if any).
 * ARGV: now_override, est, slot, slot_lease_ms, window_s, lease (0: none, 1: admit and lease,
 * 2: only lease, admitting nothing: a renewal ahead of time), then per level rpm, tpm,
 * tpd, concurrent, and what goes back from the previous leases: rpm_sec, rpm, tpm_sec, tpm,
 * day, tpd.
 * Reply: allowed, reason, level, retry_after_ms, now_ms, day, sec, then per level
 * req_remaining, req_reset_ms, tok_remaining, tok_reset_ms, day_remaining, conc_in_use,
 * grant_rpm, grant_tpm, grant_tpd. */
// clang-format off
static const char admit_body[] =
    "local now = clock(ARGV[1])\n"
    "local est = clamp(tonumber(ARGV[2]), 0, MAXL)\n"
    "local slot, slease, W = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local lease, only = ARGV[6] ~= '0', ARGV[6] == '2'\n"
    "local n = #KEYS / 4\n"
    "local day = fdiv(now, DAY)\n"
    "local sec0 = fdiv(now, 1000)\n"
    "local sec = sec0\n"
    "local why, wlevel, retry = 0, 0, 0\n"
    "local S = {}\n"
    "for i = 1, n do\n"
    "  local k, a = (i - 1) * 4, 6 + (i - 1) * 10\n"
    "  local s = {rpm = tonumber(ARGV[a + 1]), tpm = tonumber(ARGV[a + 2]),\n"
    "             tpd = tonumber(ARGV[a + 3]), conc = tonumber(ARGV[a + 4]),\n"
    "             day = day, used = 0, inuse = 0, grpm = 0, gtpm = 0, gtpd = 0}\n"
    "  S[i] = s\n"
    "  if s.rpm > 0 then\n"
    "    s.rw = wload(KEYS[k + 1], sec0)\n"
    "    sec = math.max(sec, wprune(s.rw, sec0, W))\n"
    "  end\n"
    "  if s.tpm > 0 then\n"
    "    s.tw = wload(KEYS[k + 2], sec0)\n"
    "    sec = math.max(sec, wprune(s.tw, sec0, W))\n"
    "  end\n"
    "  if s.tpd > 0 then s.day, s.used = dload(KEYS[k + 3], day) end\n"
    "end\n"
    /* The previous leases' rests come back first: they are room again. */
    "for i = 1, n do\n"
    "  local s, a = S[i], 6 + (i - 1) * 10\n"
    "  local rs, rr, ts, tr = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8])\n"
    "  local rd, rt = tonumber(ARGV[a + 9]), tonumber(ARGV[a + 10])\n"
    "  if s.rpm > 0 and rr ~= 0 then wadjust(s.rw, rs, -rr, sec) end\n"
    "  if s.tpm > 0 and tr ~= 0 then wadjust(s.tw, ts, -tr, sec) end\n"
    "  if s.tpd > 0 and rt ~= 0 and rd == s.day then s.used = clamp(s.used - rt, 0, DMAX) end\n"
    "end\n"
    "for i = 1, n do\n"
    "  local s, k = S[i], (i - 1) * 4\n"
    "  if only then break end\n"
    "  for which = 0, 3 do\n"
    "    local w, r = 0, 0\n"
    "    if which == 0 and s.rpm > 0 then\n"
    "      if not wfits(s.rw, s.rpm, 1) then w = 1; r = wretry(s.rw, s.rpm, 1, now, W) end\n"
    "    elseif which == 1 and s.tpm > 0 then\n"
    "      if not wfits(s.tw, s.tpm, est) then w = 2; r = wretry(s.tw, s.tpm, est, now, W) end\n"
    "    elseif which == 2 and s.tpd > 0 then\n"
    "      local fits\n"
    "      if est > s.tpd then fits = s.used == 0 else fits = s.used + math.max(est, 1) <= s.tpd end\n"
    "      if not fits then w = 3; r = (day + 1) * DAY - now end\n"
    "    elseif which == 3 and s.conc > 0 then\n"
    "      redis.call('ZREMRANGEBYSCORE', KEYS[k + 4], '-inf', fmt(now))\n"
    "      s.inuse = redis.call('ZCARD', KEYS[k + 4])\n"
    "      if s.inuse >= s.conc then w = 4; r = CONC_RETRY end\n"
    "    end\n"
    "    if w ~= 0 and why ~= 3 then\n"
    "      if w == 3 or why == 0 or r > retry then why, wlevel, retry = w, i - 1, r end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if why == 0 then\n"
    "  for i = 1, n do\n"
    "    local s, k = S[i], (i - 1) * 4\n"
    "    if s.rpm > 0 then\n"
    "      if not only then wadd(s.rw, sec, 1) end\n"
    "      if lease then s.grpm = fdiv(wrem(s.rw, s.rpm), 8); if s.grpm > 0 then wadd(s.rw, sec, s.grpm) end end\n"
    "    end\n"
    "    if s.tpm > 0 then\n"
    "      if not only then wadd(s.tw, sec, est) end\n"
    "      if lease then s.gtpm = fdiv(wrem(s.tw, s.tpm), 8); if s.gtpm > 0 then wadd(s.tw, sec, s.gtpm) end end\n"
    "    end\n"
    "    if s.tpd > 0 then\n"
    "      if not only then s.used = clamp(s.used + est, 0, DMAX) end\n"
    "      if lease and s.used < s.tpd then\n"
    "        s.gtpd = math.min(fdiv(s.tpd - s.used, 8), fdiv(s.tpd, 256))\n"
    "        s.used = s.used + s.gtpd\n"
    "      end\n"
    "    end\n"
    "    if s.conc > 0 and not only then\n"
    "      redis.call('ZADD', KEYS[k + 4], fmt(now + slease), slot)\n"
    "      s.inuse = s.inuse + 1\n"
    "      zexpire(KEYS[k + 4], now)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local out = {why == 0 and 1 or 0, why, wlevel, retry, now, day, sec}\n"
    "for i = 1, n do\n"
    "  local s, k = S[i], (i - 1) * 4\n"
    "  local rr, rs, tr, ts, dr, ci = 0, 0, 0, 0, 0, 0\n"
    "  if s.rpm > 0 then rr = wrem(s.rw, s.rpm); rs = wreset(s.rw, now, W); wsave(s.rw, now, W) end\n"
    "  if s.tpm > 0 then tr = wrem(s.tw, s.tpm); ts = wreset(s.tw, now, W); wsave(s.tw, now, W) end\n"
    "  if s.tpd > 0 then dr = math.max(s.tpd - s.used, 0); dsave(KEYS[k + 3], s.day, s.used, now) end\n"
    "  if s.conc > 0 then ci = s.inuse end\n"
    "  for _, x in ipairs({rr, rs, tr, ts, dr, ci, s.grpm, s.gtpm, s.gtpd}) do out[#out + 1] = x end\n"
    "end\n"
    "return out\n";
// clang-format on

/* KEYS as admit. ARGV: now_override, window_s, diff (actual - reserved), sec, day, slot, then
 * per level tpm, tpd, concurrent. */
// clang-format off
static const char settle_body[] =
    "local now = clock(ARGV[1])\n"
    "local W, diff, tsec, tday, slot = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]\n"
    "local sec = fdiv(now, 1000)\n"
    "for i = 1, #KEYS / 4 do\n"
    "  local k, a = (i - 1) * 4, 6 + (i - 1) * 3\n"
    "  local tpm, tpd, conc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])\n"
    "  if tpm > 0 and diff ~= 0 then\n"
    "    local w = wload(KEYS[k + 2], sec)\n"
    "    wadjust(w, tsec, diff, wprune(w, sec, W))\n"
    "    wsave(w, now, W)\n"
    "  end\n"
    "  if tpd > 0 and diff ~= 0 then\n"
    "    local v = redis.call('HMGET', KEYS[k + 3], 'day', 'used')\n"
    "    if tonumber(v[1]) == tday then\n"
    "      redis.call('HSET', KEYS[k + 3], 'used', fmt(clamp((tonumber(v[2]) or 0) + diff, 0, DMAX)))\n"
    "    end\n"
    "  end\n"
    "  if conc > 0 then\n"
    "    redis.call('ZREM', KEYS[k + 4], slot)\n"
    "    zexpire(KEYS[k + 4], now)\n"
    "  end\n"
    "end\n"
    "return 1\n";
// clang-format on

/* KEYS: the conc keys. ARGV: now_override, slot, lease_ms. */
// clang-format off
static const char touch_body[] =
    "local now = clock(ARGV[1])\n"
    "local slot, lease = ARGV[2], tonumber(ARGV[3])\n"
    "local held = 0\n"
    "for i = 1, #KEYS do\n"
    "  if redis.call('ZSCORE', KEYS[i], slot) then\n"
    "    redis.call('ZADD', KEYS[i], 'XX', fmt(now + lease), slot)\n"
    "    zexpire(KEYS[i], now)\n"
    "    held = held + 1\n"
    "  end\n"
    "end\n"
    "return held\n";
// clang-format on

_Static_assert(sizeof(admit_body) > sizeof(settle_body) && sizeof(admit_body) > sizeof(touch_body),
               "sources[] is sized by the admit script");
static char sources[GQ_SCRIPT_COUNT][sizeof(prelude) + sizeof(admit_body)];
static char shas[GQ_SCRIPT_COUNT][41];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_scripts(void)
{
    const char *bodies[GQ_SCRIPT_COUNT] = {admit_body, settle_body, touch_body};
    for (int i = 0; i < GQ_SCRIPT_COUNT; i++) {
        snprintf(sources[i], sizeof(sources[i]), "%s%s", prelude, bodies[i]);
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;
        if (!EVP_Digest(sources[i], strlen(sources[i]), md, &mdlen, EVP_sha1(), NULL) ||
            mdlen != 20) {
            shas[i][0] = '\0';
            continue;
        }
        for (unsigned j = 0; j < 20; j++) snprintf(&shas[i][2 * j], 3, "%02x", md[j]);
    }
}

const char *gq_script_source(gq_script_t s)
{
    pthread_once(&once, init_scripts);
    return s < GQ_SCRIPT_COUNT ? sources[s] : NULL;
}

const char *gq_script_sha(gq_script_t s)
{
    pthread_once(&once, init_scripts);
    return s < GQ_SCRIPT_COUNT ? shas[s] : NULL;
}

static int encode(char *out, size_t cap, size_t *pos, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                    (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '~' || *p == '-';
        if (*pos + (plain ? 1 : 3) >= cap) return -1;
        if (plain) {
            out[(*pos)++] = (char)*p;
        } else {
            out[(*pos)++] = '%';
            out[(*pos)++] = hex[*p >> 4];
            out[(*pos)++] = hex[*p & 15];
        }
    }
    out[*pos] = '\0';
    return 0;
}

static int append(char *out, size_t cap, size_t *pos, const char *s)
{
    size_t n = strlen(s);
    if (*pos + n >= cap) return -1;
    memcpy(out + *pos, s, n + 1);
    *pos += n;
    return 0;
}

int gq_redis_key(char *out, size_t cap, const char *tenant, const char *model, const char *suffix)
{
    size_t pos = 0;
    if (!cap) return -1;
    out[0] = '\0';
    if (append(out, cap, &pos, "gotthard:q:{") || encode(out, cap, &pos, tenant) ||
        append(out, cap, &pos, "}:"))
        return -1;
    if (model && (append(out, cap, &pos, "m:") || encode(out, cap, &pos, model) ||
                  append(out, cap, &pos, ":")))
        return -1;
    if (append(out, cap, &pos, suffix)) return -1;
    return (int)pos;
}

void gq_slot_id(char out[48], uint64_t instance, uint64_t seq)
{
    snprintf(out, 48, "%016llx:%llx", (unsigned long long)instance, (unsigned long long)seq);
}

static void cmd_init(gq_redis_cmd_t *c)
{
    c->argc = 0;
    c->used = 0;
}

static int add_arg(gq_redis_cmd_t *c, const char *s, size_t n)
{
    if (c->argc >= GQ_REDIS_MAX_ARGV || c->used + n + 1 > sizeof(c->buf)) return -1;
    memcpy(c->buf + c->used, s, n);
    c->buf[c->used + n] = '\0';
    c->argv[c->argc] = c->buf + c->used;
    c->argvlen[c->argc] = n;
    c->argc++;
    c->used += n + 1;
    return 0;
}

static int add_str(gq_redis_cmd_t *c, const char *s)
{
    return add_arg(c, s, strlen(s));
}

static int add_int(gq_redis_cmd_t *c, int64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof(b), "%lld", (long long)v);
    return add_arg(c, b, (size_t)n);
}

static int add_keyarg(gq_redis_cmd_t *c, const gq_level_info_t *lv, const char *suffix)
{
    if (c->used >= sizeof(c->buf)) return -1;
    int n = gq_redis_key(c->buf + c->used, sizeof(c->buf) - c->used, lv->tenant, lv->model, suffix);
    if (n < 0 || c->argc >= GQ_REDIS_MAX_ARGV) return -1;
    c->argv[c->argc] = c->buf + c->used;
    c->argvlen[c->argc] = (size_t)n;
    c->argc++;
    c->used += (size_t)n + 1;
    return 0;
}

/* EVALSHA sha numkeys <4 keys per level> */
static int evalsha_head(gq_redis_cmd_t *c, gq_script_t s, const gq_level_info_t lv[], int n)
{
    static const char *const suffixes[] = {"rpm", "tpm", "tpd", "conc"};
    cmd_init(c);
    if (add_str(c, "EVALSHA") || add_str(c, gq_script_sha(s)) || add_int(c, 4 * n)) return -1;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 4; j++)
            if (add_keyarg(c, &lv[i], suffixes[j])) return -1;
    return 0;
}

static int64_t clamp_tokens(int64_t v)
{
    return v < 0 ? 0 : v > GQ_MAX_LIMIT ? GQ_MAX_LIMIT : v;
}

int gq_redis_admit_cmd(gq_redis_cmd_t *c, const gq_key_t *key, int64_t est, const char *slot,
                       int64_t lease_ms, int window_s, int lease, const gq_lease_ret_t *ret,
                       int64_t now_override)
{
    gq_level_info_t lv[2];
    int n = gq_key_levels(key, lv);
    if (evalsha_head(c, GQ_SCRIPT_ADMIT, lv, n) || add_int(c, now_override) ||
        add_int(c, clamp_tokens(est)) || add_str(c, slot ? slot : "") ||
        add_int(c, lease_ms > 0 ? lease_ms : 1) || add_int(c, window_s) ||
        add_int(c, lease < 0   ? 0
                   : lease > 2 ? 2
                               : lease))
        return -1;
    for (int i = 0; i < n; i++) {
        const gq_limits_t *l = lv[i].limits;
        gq_lease_ret_t r = {0};
        if (ret) r = ret[i];
        if (add_int(c, l->rpm) || add_int(c, l->tpm) || add_int(c, l->tpd) ||
            add_int(c, l->concurrent) || add_int(c, r.rpm_sec) || add_int(c, r.rpm) ||
            add_int(c, r.tpm_sec) || add_int(c, r.tpm) || add_int(c, r.day) || add_int(c, r.tpd))
            return -1;
    }
    return 0;
}

int gq_redis_settle_cmd(gq_redis_cmd_t *c, const gq_ticket_t *t, int64_t actual, int window_s,
                        int64_t now_override)
{
    gq_level_info_t lv[2];
    int n = gq_key_levels(t->key, lv);
    if (evalsha_head(c, GQ_SCRIPT_SETTLE, lv, n) || add_int(c, now_override) ||
        add_int(c, window_s) || add_int(c, clamp_tokens(actual) - t->reserved) ||
        add_int(c, t->sec) || add_int(c, t->day) || add_str(c, t->slot))
        return -1;
    for (int i = 0; i < n; i++) {
        const gq_limits_t *l = lv[i].limits;
        if (add_int(c, l->tpm) || add_int(c, l->tpd) || add_int(c, l->concurrent)) return -1;
    }
    return 0;
}

int gq_redis_touch_cmd(gq_redis_cmd_t *c, const gq_ticket_t *t, int64_t lease_ms,
                       int64_t now_override)
{
    gq_level_info_t lv[2];
    int n = gq_key_levels(t->key, lv), nk = 0;
    for (int i = 0; i < n; i++) nk += lv[i].limits->concurrent != 0;
    cmd_init(c);
    if (add_str(c, "EVALSHA") || add_str(c, gq_script_sha(GQ_SCRIPT_TOUCH)) || add_int(c, nk))
        return -1;
    for (int i = 0; i < n; i++)
        if (lv[i].limits->concurrent && add_keyarg(c, &lv[i], "conc")) return -1;
    if (add_int(c, now_override) || add_str(c, t->slot) || add_int(c, lease_ms > 0 ? lease_ms : 1))
        return -1;
    return 0;
}

void gq_day_string(char out[11], int64_t day)
{
    time_t t = (time_t)(day * 86400);
    struct tm tm;
    gmtime_r(&t, &tm);
    unsigned y = (unsigned)(tm.tm_year + 1900) % 10000u, m = (unsigned)(tm.tm_mon + 1) % 13u,
             d = (unsigned)tm.tm_mday % 32u;
    snprintf(out, 11, "%04u-%02u-%02u", y, m, d);
}

int64_t gq_day_parse(const char *s)
{
    int y, m, d, n = 0;
    if (!s || sscanf(s, "%4d-%2d-%2d%n", &y, &m, &d, &n) != 3 || s[n] || m < 1 || m > 12 || d < 1 ||
        d > 31 || y < 1970)
        return -1;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d};
    time_t t = timegm(&tm);
    char back[11];
    gq_day_string(back, (int64_t)t / 86400);
    return t >= 0 && strcmp(back, s) == 0 ? (int64_t)t / 86400 : -1;
}

int gq_usage_key(char *out, size_t cap, const char *tenant, int64_t day)
{
    size_t pos = 0;
    char date[11];
    gq_day_string(date, day);
    if (!cap) return -1;
    out[0] = '\0';
    if (append(out, cap, &pos, "gotthard:u:{") || encode(out, cap, &pos, tenant) ||
        append(out, cap, &pos, "}:") || append(out, cap, &pos, date))
        return -1;
    return (int)pos;
}

int gq_redis_usage_cmd(gq_redis_cmd_t *c, int step, const char *tenant, const gq_usage_t *u)
{
    static const char *const fields[] = {"requests", "prompt_tokens", "completion_tokens"};
    const int64_t v[] = {u->requests, u->prompt_tokens, u->completion_tokens};
    char key[512];
    int n = gq_usage_key(key, sizeof(key), tenant, u->day);
    cmd_init(c);
    if (n < 0 || step < 0 || step > 3) return -1;
    if (step == 3)
        return add_str(c, "EXPIRE") || add_arg(c, key, (size_t)n) ||
                       add_int(c, (int64_t)GQ_USAGE_KEEP_DAYS * 86400)
                   ? -1
                   : 0;
    return add_str(c, "HINCRBY") || add_arg(c, key, (size_t)n) || add_str(c, fields[step]) ||
                   add_int(c, v[step])
               ? -1
               : 0;
}

int gq_redis_load_cmd(gq_redis_cmd_t *c, gq_script_t s)
{
    const char *src = gq_script_source(s);
    cmd_init(c);
    if (!src || add_str(c, "SCRIPT") || add_str(c, "LOAD")) return -1;
    /* The source is static: point at it rather than copying it into buf. */
    if (c->argc >= GQ_REDIS_MAX_ARGV) return -1;
    c->argv[c->argc] = src;
    c->argvlen[c->argc] = strlen(src);
    c->argc++;
    return 0;
}

int gq_redis_is_noscript(const struct redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

#define FIGS 9 /* per level in the admit reply */

int gq_redis_admit_parse(const struct redisReply *r, const gq_key_t *key, int64_t est,
                         const char *slot, gq_decision_t *d, gq_ticket_t *t,
                         gq_lease_grant_t grant[2], gq_level_fig_t figs[2])
{
    gq_level_info_t lv[2];
    int n = gq_key_levels(key, lv);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != (size_t)(7 + FIGS * n)) return -1;
    int64_t v[7 + 2 * FIGS];
    for (size_t i = 0; i < r->elements; i++) {
        if (r->element[i]->type != REDIS_REPLY_INTEGER) return -1;
        v[i] = r->element[i]->integer;
    }
    if (v[1] < GQ_OK || v[1] > GQ_CONC || v[2] < 0 || v[2] >= n) return -1;
    gq_level_fig_t fig[2];
    const gq_limits_t *lims[2] = {lv[0].limits, n > 1 ? lv[1].limits : NULL};
    for (int i = 0; i < n; i++) {
        const int64_t *f = &v[7 + FIGS * i];
        fig[i] = (gq_level_fig_t){f[0], f[1], f[2], f[3], f[4], f[5]};
        if (grant) grant[i] = (gq_lease_grant_t){v[6], v[5], f[6], f[7], f[8]};
        if (figs) figs[i] = fig[i];
    }
    memset(d, 0, sizeof(*d));
    d->allowed = v[0] == 1;
    d->reason = (gq_reason_t)v[1];
    d->level = (int)v[2];
    d->retry_after_ms = v[3];
    d->now_ms = v[4];
    gq_state_merge(&d->state, n, lims, fig, v[4]);
    if (!d->allowed) return 0;
    if (t) {
        memset(t, 0, sizeof(*t));
        t->key = key;
        t->reserved = clamp_tokens(est);
        t->sec = v[6];
        t->day = v[5];
        for (int i = 0; i < n; i++) t->slot_taken[i] = lv[i].limits->concurrent != 0;
        snprintf(t->slot, sizeof(t->slot), "%s", slot ? slot : "");
    }
    return 1;
}
