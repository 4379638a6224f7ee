/* Unit tests of the vLLM metrics scrape (gateway/vllm_metrics.c): pages as vLLM serves them,
 * and broken ones, with the numbers queue_aware balancing gets from each. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "base/vllm_metrics.h"

typedef struct expect {
    const char *name, *text;
    int found, waiting, running, cache_pm; /* found: the GW_VLLM_* bits */
} expect_t;

#define M "{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}"
#define E0 "{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}"
#define E1 "{engine=\"1\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}"

/* vLLM 0.6 (the V0 engine): one sample of each, between HELP and TYPE lines and other metrics. */
static const char vllm_v0[] =
    "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running" M " 3.0\n"
    "# HELP vllm:num_requests_swapped Number of requests swapped to CPU.\n"
    "# TYPE vllm:num_requests_swapped gauge\n"
    "vllm:num_requests_swapped" M " 0.0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting" M " 1.0\n"
    "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE vllm:gpu_cache_usage_perc gauge\n"
    "vllm:gpu_cache_usage_perc" M " 0.4523\n"
    "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
    "# TYPE vllm:prompt_tokens_total counter\n"
    "vllm:prompt_tokens_total" M " 123456.0\n";

/* The V1 engine with two engines (data parallel): samples per engine, summed; the cache usage
 * is the fuller engine's; process metrics and histograms around them. */
static const char vllm_v1[] =
    "# HELP python_gc_objects_collected_total Objects collected during gc\n"
    "# TYPE python_gc_objects_collected_total counter\n"
    "python_gc_objects_collected_total{generation=\"0\"} 12345.0\n"
    "process_resident_memory_bytes 1.234567168e+09\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running" E0 " 12.0\n"
    "vllm:num_requests_running" E1 " 10.0\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting" E0 " 4.0\n"
    "vllm:num_requests_waiting" E1 " 0.0\n"
    "# TYPE vllm:gpu_cache_usage_perc gauge\n"
    "vllm:gpu_cache_usage_perc" E0 " 0.87\n"
    "vllm:gpu_cache_usage_perc" E1 " 0.91\n"
    "vllm:kv_cache_usage_perc" E0 " 0.99\n"
    "# TYPE vllm:time_to_first_token_seconds histogram\n"
    "vllm:time_to_first_token_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"m\"} 42.0\n"
    "vllm:time_to_first_token_seconds_count{engine=\"0\",model_name=\"m\"} 42.0\n";

enum { W = GW_VLLM_WAITING, R = GW_VLLM_RUNNING, C = GW_VLLM_CACHE };

static const expect_t cases[] = {
    {"vLLM 0.6 page", vllm_v0, W | R | C, 1, 3, 452},
    {"vLLM V1, two engines (both cache names: the largest)", vllm_v1, W | R | C, 4, 22, 990},
    {"CRLF line ends",
     "vllm:num_requests_waiting 2.0\r\nvllm:num_requests_running 5.0\r\n"
     "vllm:gpu_cache_usage_perc 0.5\r\n",
     W | R | C, 2, 5, 500},
    {"no labels, no final line end", "vllm:num_requests_waiting 2\nvllm:num_requests_running 5",
     W | R, 2, 5, 0},
    {"a tab before the value (the text format allows it)",
     "vllm:num_requests_waiting\t2\nvllm:num_requests_running\t7.0\n", W | R, 2, 7, 0},
    {"a label value with a space and a quote",
     "vllm:num_requests_running{model_name=\"a b\\\"c\"} 6\n", R, 0, 6, 0},
    {"exponents", "vllm:num_requests_waiting 1e2\nvllm:num_requests_running 2.5E+01\n", W | R, 100,
     25, 0},
    {"fractions are cut", "vllm:num_requests_waiting 0.5\nvllm:num_requests_waiting 0.7\n", W, 1, 0,
     0},
    {"cache usage above 1 counts as full", "vllm:gpu_cache_usage_perc 1.5\n", C, 0, 0, 1000},
    {"vLLM 0.10 and later: kv_cache_usage_perc",
     "vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n", C, 0, 0, 250},
    /* broken or hostile */
    {"empty", "", 0, 0, 0, 0},
    {"an HTML error page", "<html><body><h1>502 Bad Gateway</h1></body></html>\n", 0, 0, 0, 0},
    {"JSON, not Prometheus text", "{\"num_requests_waiting\": 3}", 0, 0, 0, 0},
    {"negative, NaN and infinite values are ignored",
     "vllm:num_requests_waiting -1\nvllm:num_requests_running NaN\n"
     "vllm:num_requests_running +Inf\nvllm:gpu_cache_usage_perc -0.5\n",
     0, 0, 0, 0},
    {"a value of 1e9 or more is ignored",
     "vllm:num_requests_waiting 1e9\nvllm:num_requests_running 999999999\n", R, 0, 999999999, 0},
    {"sums beyond an int stop at INT_MAX (they were an undefined conversion)",
     "vllm:num_requests_waiting 999999999\nvllm:num_requests_waiting 999999999\n"
     "vllm:num_requests_waiting 999999999\nvllm:num_requests_running 1\n",
     W | R, INT_MAX, 1, 0},
    {"names that only begin like ours",
     "vllm:num_requests_waiting_total 9\nvllm:num_requests_runningx 9\n"
     "vllm:gpu_cache_usage_perc_max 1\n",
     0, 0, 0, 0},
    {"comments", "# vllm:num_requests_waiting 9\n#vllm:num_requests_running 9\n", 0, 0, 0, 0},
    {"a value with trailing bytes", "vllm:num_requests_waiting 5x\nvllm:num_requests_running 5 x\n",
     0, 0, 0, 0},
    {"whitespace after the value",
     "vllm:num_requests_running 5 \r\nvllm:num_requests_waiting\t1\t\n", W | R, 1, 5, 0},
    {"a value longer than a number can be",
     "vllm:num_requests_waiting "
     "0.000000000000000000000000000000000000000000000000000000000000000000000000001\n",
     0, 0, 0, 0},
    {"a timestamp after the value (the text format allows one; vLLM sends none)",
     "vllm:num_requests_waiting 3 1700000000000\nvllm:num_requests_running{a=\"x\"} 2 -5\r\n",
     W | R, 3, 2, 0},
    {"a timestamp that is not an integer, or two of them",
     "vllm:num_requests_waiting 3 17.5\nvllm:num_requests_running 2 1 2\n", 0, 0, 0, 0},
    {"label values with braces, spaces, escaped quotes and backslashes",
     "vllm:num_requests_running{a=\"} {\",b=\"q\\\" }\",c=\"\\\\\"} 4\n", R, 0, 4, 0},
    {"a label set left open",
     "vllm:num_requests_running{a=\"x\" 4\nvllm:num_requests_waiting{a=\"\\\n", 0, 0, 0, 0},
    {"no space between the labels and the value", "vllm:num_requests_running{a=\"x\"}4\n", 0, 0, 0,
     0},
    {"data parallel, two waiting samples and no running one: running is missing, not 0",
     "vllm:num_requests_waiting" E0 " 4.0\nvllm:num_requests_waiting" E1 " 2.0\n", W, 6, 0, 0},
    {"a line without a value", "vllm:num_requests_waiting\nvllm:num_requests_running \n", 0, 0, 0,
     0},
};

int main(void)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const expect_t *e = &cases[i];
        /* An exact copy, without a terminating NUL: the parser must keep to len. */
        size_t len = strlen(e->text);
        char *copy = malloc(len ? len : 1);
        memcpy(copy, e->text, len);
        int w = -1, r = -1, c = -1;
        int found = gw_vllm_metrics_parse(copy, len, &w, &r, &c);
        CHECK(found == e->found && w == e->waiting && r == e->running && c == e->cache_pm,
              "%s: found %#x waiting %d running %d cache %d, want %#x %d %d %d", e->name, found, w,
              r, c, e->found, e->waiting, e->running, e->cache_pm);
        free(copy);
    }
    return check_done();
}
