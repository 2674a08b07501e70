/* neuroplastic from C: a forward and backward pass through a recurrent
 * layer with the retroactive (eligibility-trace) rule, and a check of every
 * parameter's gradient against a central finite difference.
 *
 * Build (from the repository root):
 *   cargo build --release -p neuroplastic-capi
 *   cc capi/examples/gradcheck.c -Icapi/include target/release/libneuroplastic_c.a \
 *      -lpthread -ldl -lm -o gradcheck && ./gradcheck
 * Exit status 0 when every gradient matches. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "neuroplastic.h"

#define N 6 /* neurons */
#define X 3 /* input features */
#define B 2 /* episodes */
#define T 5 /* steps */

static int fail(const char *what, NpStatus s) {
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)s, np_last_error());
    return 1;
}

/* A small deterministic generator in [-1, 1). */
static float draw(unsigned *state) {
    *state = *state * 1103515245u + 12345u;
    return (float)((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* L = sum over b, t, j of c[b, t, j] * y[b, t, j], in double. */
static double loss(NpLayer *layer, const float *inputs, const float *c, float *y, NpStatus *status) {
    NpForward *fwd = NULL;
    *status = np_forward(layer, inputs, B * T * X, B, T, NULL, 0, &fwd);
    if (*status != NP_OK) return 0.0;
    *status = np_forward_y(fwd, y, B * T * N);
    np_forward_free(fwd);
    double l = 0.0;
    for (int k = 0; k < B * T * N; k++) l += (double)c[k] * (double)y[k];
    return l;
}

int main(void) {
    NpLayerConfig cfg;
    NpStatus s = np_layer_config_init(&cfg, NP_RULE_RETROACTIVE, NP_TOPOLOGY_RECURRENT, N, X);
    if (s != NP_OK) return fail("np_layer_config_init", s);
    cfg.bias = 1;
    cfg.clip = 10.0; /* far above the traces: no clip kink inside a difference */
    NpOptions opts;
    np_options_init(&opts);
    opts.threads = 1;
    NpLayer *layer = NULL;
    s = np_layer_new(&cfg, NP_DEVICE_CPU, 0, &opts, &layer);
    if (s != NP_OK) return fail("np_layer_new", s);

    size_t plen = 0;
    np_layer_param_len(layer, &plen);
    float *params = malloc(plen * sizeof(float));
    float *grad = malloc(plen * sizeof(float));
    unsigned seed = 7;
    for (size_t k = 0; k < plen; k++) params[k] = 0.5f * draw(&seed);
    /* eta_e must lie in [0, 1]: find it by name. */
    for (size_t i = 0; i < NP_PARAM_TENSORS; i++) {
        const char *name;
        size_t off, len;
        np_layer_param_tensor(layer, i, &name, &off, &len);
        if (name[0] == 'e' && len == 1) params[off] = 0.3f;
    }
    s = np_layer_set_params(layer, params, plen);
    if (s != NP_OK) return fail("np_layer_set_params", s);

    float inputs[B * T * X], c[B * T * N], y[B * T * N];
    for (int k = 0; k < B * T * X; k++) inputs[k] = draw(&seed);
    for (int k = 0; k < B * T * N; k++) c[k] = draw(&seed);

    /* Analytic: dL/dy = c. */
    NpForward *fwd = NULL;
    s = np_forward(layer, inputs, B * T * X, B, T, NULL, 0, &fwd);
    if (s != NP_OK) return fail("np_forward", s);
    s = np_backward(layer, fwd, c, B * T * N, NULL, 0, grad, plen, NULL, 0, NULL, 0);
    np_forward_free(fwd);
    if (s != NP_OK) return fail("np_backward", s);

    /* Central differences in f32 parameters: step 1e-2, error O(h^2) plus
     * rounding of about 1e-7 |L| / h (about 1e-4 here); held to 1e-3 of the
     * largest gradient. */
    const float h = 1e-2f;
    double worst = 0.0, scale = 0.0;
    size_t worst_at = 0;
    for (size_t k = 0; k < plen; k++) scale = fmax(scale, fabs(grad[k]));
    for (size_t k = 0; k < plen; k++) {
        float p0 = params[k];
        params[k] = p0 + h;
        np_layer_set_params(layer, params, plen);
        double lp = loss(layer, inputs, c, y, &s);
        params[k] = p0 - h;
        np_layer_set_params(layer, params, plen);
        double lm = loss(layer, inputs, c, y, &s);
        params[k] = p0;
        if (s != NP_OK) return fail("np_forward (difference)", s);
        double fd = (lp - lm) / (2.0 * h);
        double err = fabs(fd - grad[k]) / scale;
        if (err > worst) {
            worst = err;
            worst_at = k;
        }
    }
    np_layer_set_params(layer, params, plen);
    printf("neuroplastic %s: %zu parameters, largest |g - fd| / max|g| = %.2e at %zu\n", np_version(), plen, worst,
           worst_at);

    /* Errors name the argument: a dy of the wrong length. */
    s = np_forward(layer, inputs, B * T * X, B, T, NULL, 0, &fwd);
    if (s != NP_OK) return fail("np_forward", s);
    NpStatus bad = np_backward(layer, fwd, c, 3, NULL, 0, grad, plen, NULL, 0, NULL, 0);
    np_forward_free(fwd);
    printf("a short dy: status %d, \"%s\"\n", (int)bad, np_last_error());

    np_layer_free(layer);
    free(params);
    free(grad);
    if (worst > 1e-3 || bad != NP_ERR_INVALID) {
        printf("FAILED\n");
        return 1;
    }
    printf("ok\n");
    return 0;
}
