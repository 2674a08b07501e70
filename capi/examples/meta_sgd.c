/* neuroplastic from C: the meta-gradient of OML-style meta-learning on a
 * procedural sine-regression task family. A representation network (RLN)
 * feeds a prediction network (PLN) whose weights take S plain SGD steps per
 * task (the inner loop); the meta-loss is the error on fresh points of the
 * task afterwards, and np_meta_grad gives its exact second-order gradient
 * for every parameter (RLN, and the PLN's starting weights).
 *
 * The example checks that gradient against central finite differences of
 * the meta-loss on the f64 reference, checks the f32 CPU gradient against
 * the reference one, meta-trains with Adam for a few hundred outer steps
 * (the meta-loss on held-out tasks must fall), and shows an error message.
 *
 * Build (from the repository root):
 *   cargo build --release -p neuroplastic-capi
 *   cc capi/examples/meta_sgd.c -Icapi/include target/release/libneuroplastic_c.a \
 *      -lpthread -ldl -lm -o meta_sgd && ./meta_sgd
 * Exit status 0 when every check passes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "neuroplastic.h"

#define D 3       /* input features: x / pi, sin x, cos x */
#define O 1       /* outputs */
#define P 4       /* tasks per meta-batch */
#define S 5       /* inner SGD steps per task */
#define BI 8      /* rows of an inner batch */
#define BO 16     /* rows of the outer (meta-loss) batch */
#define PE 32     /* held-out tasks the meta-loss is measured on */
#define STEPS 300 /* outer (meta-training) steps */

static const double PI = 3.14159265358979323846;

static int fail(const char *what, NpStatus s) {
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)s, np_last_error());
    return 1;
}

/* A small deterministic generator in [-1, 1). */
static float draw(unsigned *state) {
    *state = *state * 1103515245u + 12345u;
    return (float)((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* Uniform in [lo, hi). */
static double uniform(unsigned *state, double lo, double hi) {
    return lo + (hi - lo) * 0.5 * ((double)draw(state) + 1.0);
}

/* A batch of tasks: arrays of the shapes np_meta_grad takes. */
typedef struct {
    size_t p;
    float *ix, *iy, *ox, *oy; /* (p, S, BI, D), (p, S, BI, O), (p, BO, D), (p, BO, O) */
} Tasks;

/* One point of y = a sin(x + phase): its features and its target. */
static void point(unsigned *state, double a, double phase, float *x, float *y) {
    double v = uniform(state, -PI, PI);
    x[0] = (float)(v / PI);
    x[1] = (float)sin(v);
    x[2] = (float)cos(v);
    y[0] = (float)(a * sin(v + phase));
}

/* Fills `t` with `t->p` fresh functions: amplitude in [0.5, 2], phase in
 * [0, pi]; S inner batches and one outer batch of points of each. */
static void draw_tasks(Tasks *t, unsigned *state) {
    for (size_t k = 0; k < t->p; k++) {
        double a = uniform(state, 0.5, 2.0), phase = uniform(state, 0.0, PI);
        for (size_t r = k * S * BI; r < (k + 1) * S * BI; r++) point(state, a, phase, t->ix + r * D, t->iy + r * O);
        for (size_t r = k * BO; r < (k + 1) * BO; r++) point(state, a, phase, t->ox + r * D, t->oy + r * O);
    }
}

static Tasks tasks_new(size_t p) {
    Tasks t = {p, malloc(p * S * BI * D * sizeof(float)), malloc(p * S * BI * O * sizeof(float)),
               malloc(p * BO * D * sizeof(float)), malloc(p * BO * O * sizeof(float))};
    return t;
}

static void tasks_free(Tasks *t) {
    free(t->ix);
    free(t->iy);
    free(t->ox);
    free(t->oy);
}

/* The meta-loss and its gradient on `t`. */
static NpStatus meta(const NpMeta *m, uint32_t device, const float *params, size_t plen, const Tasks *t,
                     double *loss, float *grad) {
    size_t p = t->p;
    return np_meta_grad(m, device, params, plen, p, S, BI, BO, t->ix, p * S * BI * D, t->iy, p * S * BI * O, t->ox,
                        p * BO * D, t->oy, p * BO * O, loss, grad, plen);
}

/* Where each layer's weight and bias lie in the flat parameter array. */
typedef struct {
    char name[64];
    size_t off, len, fan_in;
} Tensor;

static size_t layout(const char *stack, const size_t *w, size_t n, size_t off, Tensor *out, size_t *count) {
    for (size_t i = 0; i + 1 < n; i++) {
        Tensor *t = &out[(*count)++];
        snprintf(t->name, sizeof t->name, "%s.%u.weight", stack, (unsigned)i);
        t->off = off;
        t->len = w[i] * w[i + 1];
        t->fan_in = w[i];
        off += t->len;
        t = &out[(*count)++];
        snprintf(t->name, sizeof t->name, "%s.%u.bias", stack, (unsigned)i);
        t->off = off;
        t->len = w[i + 1];
        t->fan_in = 0;
        off += t->len;
    }
    return off;
}

int main(void) {
    static const size_t rln[] = {D, 8, 8}, pln[] = {8, 8, O};
    NpMeta m;
    memset(&m, 0, sizeof m);
    m.loss = NP_META_MSE;
    m.order = NP_META_SECOND;
    m.learn_lr = 0;
    m.inner_lr = 0.05; /* beta */
    m.rln = rln;
    m.rln_len = 3;
    m.pln = pln;
    m.pln_len = 3;
    m.nm = NULL; /* no neuromodulation (with one it would be ANML) */
    m.nm_len = 0;

    size_t plen = 0;
    NpStatus s = np_meta_param_len(&m, &plen);
    if (s != NP_OK) return fail("np_meta_param_len", s);
    Tensor tensors[8];
    size_t nt = 0;
    size_t end = layout("rln", rln, 3, 0, tensors, &nt);
    end = layout("pln", pln, 3, end, tensors, &nt);
    if (end != plen) {
        printf("layout gives %zu parameters, np_meta_param_len %zu\nFAILED\n", end, plen);
        return 1;
    }

    /* He-style initialisation: weights uniform with variance 2 / fan-in,
     * biases small. */
    float *params = malloc(plen * sizeof(float)), *grad = malloc(plen * sizeof(float));
    float *gcpu = malloc(plen * sizeof(float));
    unsigned seed = 11;
    for (size_t i = 0; i < nt; i++) {
        float scale = tensors[i].fan_in ? sqrtf(6.0f / (float)tensors[i].fan_in) : 0.1f;
        for (size_t k = 0; k < tensors[i].len; k++) params[tensors[i].off + k] = scale * draw(&seed);
    }
    printf("neuroplastic %s: OML meta-gradient, RLN {3, 8, 8}, PLN {8, 8, 1}, beta %.2f, %zu parameters\n",
           np_version(), m.inner_lr, plen);

    /* 1. The reference gradient against finite differences of its loss,
     * for every parameter. With ReLUs inside the PLN the inner gradients,
     * hence the meta-loss, jump wherever a PLN pre-activation of an inner row
     * crosses zero (by about 1e-3 here), so the step is small: the loss is
     * f64 inside, so a step of 1e-6 costs no accuracy (rounding about
     * 1e-16 / 1e-6), and the quotients use the step the float parameter
     * actually took. The central quotient is held to 1e-5. Where it misses
     * because a jump or a ReLU's corner falls within the step (rare), the
     * gradient must be the slope on one side (the one-sided quotient, held
     * to 1e-3, its O(h) error) and the entry counts as a kink; a quarter of
     * the entries at kinks fails the check (a gradient off by a small factor
     * everywhere would pass one-sided checks). */
    Tasks t = tasks_new(P);
    draw_tasks(&t, &seed);
    double l0 = 0.0, lp = 0.0, lm = 0.0;
    s = meta(&m, NP_DEVICE_REFERENCE, params, plen, &t, &l0, grad);
    if (s != NP_OK) return fail("np_meta_grad (reference)", s);
    double gmax = 0.0;
    for (size_t k = 0; k < plen; k++) gmax = fmax(gmax, fabs(grad[k]));
    const float h = 1e-6f;
    double worst_fd = 0.0;
    size_t kinks = 0;
    for (size_t i = 0; i < nt; i++) {
        double worst = 0.0;
        size_t at = 0, tensor_kinks = 0;
        for (size_t j = 0; j < tensors[i].len; j++) {
            size_t k = tensors[i].off + j;
            float p0 = params[k];
            params[k] = p0 + h;
            double hp = (double)params[k] - p0;
            s = meta(&m, NP_DEVICE_REFERENCE, params, plen, &t, &lp, gcpu);
            params[k] = p0 - h;
            double hm = (double)p0 - params[k];
            if (s == NP_OK) s = meta(&m, NP_DEVICE_REFERENCE, params, plen, &t, &lm, gcpu);
            params[k] = p0;
            if (s != NP_OK) return fail("np_meta_grad (difference)", s);
            /* Relative to the entry, but not below 1e-2 of the largest. */
            double scale = fmax(fabs(grad[k]), 1e-2 * gmax);
            double err = fabs((lp - lm) / (hp + hm) - grad[k]) / scale;
            if (err > 1e-5) {
                /* A kink within the step: the gradient is one side's slope. */
                double e1 = fabs((lp - l0) / hp - grad[k]) / scale, e2 = fabs((l0 - lm) / hm - grad[k]) / scale;
                err = 1e-2 * fmin(e1, e2); /* one-sided: 1e-3 counts as the central 1e-5 */
                tensor_kinks++;
            }
            if (err > worst) worst = err, at = j;
        }
        kinks += tensor_kinks;
        worst_fd = fmax(worst_fd, worst);
        printf("  %-14s %3zu entries, worst rel %.1e at [%zu], %zu at a kink\n", tensors[i].name, tensors[i].len, worst,
               at, tensor_kinks);
    }
    printf("reference vs finite differences, all %zu parameters: meta-loss %.6f, worst rel %.1e, %zu at a kink\n",
           plen, l0, worst_fd, kinks);

    /* 2. The f32 CPU backend against the f64 reference on the same tasks. */
    double lc = 0.0, worst_cpu = 0.0;
    s = meta(&m, NP_DEVICE_CPU, params, plen, &t, &lc, gcpu);
    if (s != NP_OK) return fail("np_meta_grad (cpu)", s);
    for (size_t k = 0; k < plen; k++) worst_cpu = fmax(worst_cpu, fabs(gcpu[k] - grad[k]) / gmax);
    double loss_cpu = fabs(lc - l0) / l0;
    printf("cpu vs reference: meta-loss %.6f (rel %.1e), largest |g_cpu - g_ref| / max|g_ref| = %.1e\n", lc, loss_cpu,
           worst_cpu);

    /* 3. Meta-training: Adam on every parameter, fresh tasks each step. */
    Tasks held = tasks_new(PE);
    unsigned held_seed = 2024;
    draw_tasks(&held, &held_seed);
    double before = 0.0, after = 0.0;
    s = meta(&m, NP_DEVICE_CPU, params, plen, &held, &before, gcpu);
    if (s != NP_OK) return fail("np_meta_grad (held-out)", s);
    float *mom = calloc(plen, sizeof(float)), *vel = calloc(plen, sizeof(float));
    const double lr = 3e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    double first10 = 0.0, last10 = 0.0;
    for (int step = 1; step <= STEPS; step++) {
        double l = 0.0;
        draw_tasks(&t, &seed);
        s = meta(&m, NP_DEVICE_CPU, params, plen, &t, &l, gcpu);
        if (s != NP_OK) return fail("np_meta_grad (training)", s);
        if (step <= 10) first10 += l / 10;
        if (step > STEPS - 10) last10 += l / 10;
        double c1 = 1.0 - pow(b1, step), c2 = 1.0 - pow(b2, step);
        for (size_t k = 0; k < plen; k++) {
            double g = gcpu[k];
            mom[k] = (float)(b1 * mom[k] + (1.0 - b1) * g);
            vel[k] = (float)(b2 * vel[k] + (1.0 - b2) * g * g);
            params[k] -= (float)(lr * (mom[k] / c1) / (sqrt(vel[k] / c2) + eps));
        }
    }
    s = meta(&m, NP_DEVICE_CPU, params, plen, &held, &after, gcpu);
    if (s != NP_OK) return fail("np_meta_grad (held-out)", s);
    printf("meta-training, %d Adam steps of %d tasks: training meta-loss %.4f (first 10) -> %.4f (last 10)\n", STEPS, P,
           first10, last10);
    printf("meta-loss on %d held-out tasks: %.4f -> %.4f\n", PE, before, after);

    /* 4. Errors name the argument: an inner_x one float short. */
    NpStatus bad = np_meta_grad(&m, NP_DEVICE_CPU, params, plen, P, S, BI, BO, t.ix, P * S * BI * D - 1, t.iy,
                                P * S * BI * O, t.ox, P * BO * D, t.oy, P * BO * O, &l0, grad, plen);
    const char *msg = np_last_error();
    printf("a short inner_x: status %d, \"%s\"\n", (int)bad, msg);
    int named = strncmp(msg, "inner_x", 7) == 0;

    tasks_free(&t);
    tasks_free(&held);
    free(params);
    free(grad);
    free(gcpu);
    free(mom);
    free(vel);
    /* Tolerances. Finite differences: 1e-5, the reference gradient is
     * rounded to float (6e-8) and the central quotient is good to about
     * 1e-9 (one-sided ones, at a kink, to 1e-3); at most a quarter of the
     * entries may sit at a kink. CPU: f32 through five inner steps, seen at about 1e-7 of the
     * largest gradient; held to 1e-4. Training: the held-out meta-loss must
     * fall below a quarter of its start (it falls to about an eighth; with
     * the gradient's sign flipped it rises). */
    if (worst_fd > 1e-5 || kinks * 4 > plen || worst_cpu > 1e-4 || loss_cpu > 1e-5 || !(after < 0.25 * before) || bad != NP_ERR_INVALID ||
        !named) {
        printf("FAILED\n");
        return 1;
    }
    printf("ok\n");
    return 0;
}
