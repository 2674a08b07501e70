//! [`neuroplastic::meta::estimate`] against what [`cpu::meta_grad`] really
//! allocates, and [`loss_estimate`] against [`cpu::meta_loss`], counted by a
//! global allocator: the estimate must not be below
//! the peak (a refusal that lets a job through that then dies is worse than
//! none) nor far above it (that would refuse jobs that fit). One test in this
//! binary, so no other test's allocations are counted.

mod meta_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use meta_support::{Case, Rng, init, random_wide};
use neuroplastic::meta::{Loss, MetaConfig, MetaModel, Order, Trajectory, cpu, estimate, loss_estimate, pool};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = NOW.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        NOW.fetch_sub(l.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn the_memory_estimate_bounds_the_allocations_closely() {
    let pool2 = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let base = Case::oml(4, 25, 8, 16);
    let cases = [
        ("OML", base.clone()),
        ("ANML, gate 1, clamp, learned β", Case { nm: true, gate_at: 1, clamp: 0.3, learn_lr: true, ..base.clone() }),
        ("MAML, xent, 3 layers", Case { rln: false, loss: Loss::Xent, pln_layers: 3, ..base.clone() }),
        ("truncated to 5", Case { truncate: 5, ..base.clone() }),
        ("first order", Case { order: Order::First, ..base.clone() }),
        ("ANML, gate 0", Case { nm: true, gate_at: 0, ..base.clone() }),
    ];
    for (what, c) in cases {
        let (m, t) = random_wide(&c, 3, 96);
        let (m, t) = (m.cast::<f32>(), t.cast::<f32>());
        let want = pool2.install(|| {
            pool::release();
            let est = estimate(&m, &t, rayon::current_num_threads().min(t.p)).total() as f64;
            let before = NOW.load(Ordering::SeqCst);
            PEAK.store(before, Ordering::SeqCst);
            let g = cpu::meta_grad(&m, &t).unwrap();
            let peak = (PEAK.load(Ordering::SeqCst) - before) as f64;
            let loss = g.loss;
            drop(g);
            println!("{what}: allocated at most {peak:.0} bytes, estimated {est:.0} ({:.2}×)", est / peak);
            assert!(peak <= est, "{what}: allocated {peak} bytes, more than the estimate {est}");
            assert!(est <= 2.5 * peak, "{what}: the estimate {est} is far above the {peak} bytes allocated");
            loss
        });
        // The loss-only pass against its own estimate, from an empty pool, on
        // a thread of its own (whose products' scratch is not yet grown) and
        // one task at a time, so that the peak is the estimate's case and
        // not a chance overlap of two threads' tasks.
        let pool1 = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let loss = pool1.install(|| {
            pool::release();
            let est = loss_estimate(&m, &t, 1).total() as f64;
            let before = NOW.load(Ordering::SeqCst);
            PEAK.store(before, Ordering::SeqCst);
            let loss = cpu::meta_loss(&m, &t).unwrap();
            let peak = (PEAK.load(Ordering::SeqCst) - before) as f64;
            println!("{what}, loss only: allocated at most {peak:.0} bytes, estimated {est:.0} ({:.2}×)", est / peak);
            assert!(peak <= est, "{what}, loss only: allocated {peak} bytes, more than the estimate {est}");
            assert!(est <= 2.5 * peak, "{what}, loss only: the estimate {est} is far above the {peak} bytes allocated");
            loss
        });
        assert_eq!(loss.to_bits(), want.to_bits(), "{what}: meta_loss ≠ meta_grad's loss");
    }

    // An RLN whose hidden layers all differ in width, over enough rows that
    // every hidden layer's products are masked ones (`meta::sparse`, on
    // AVX2 and AVX-512 builds): their scratch differs in size from layer to
    // layer, and must not pile up (pooled, it did: 0.8× the peak).
    let mut rng = Rng::new(5);
    let rln = [3, 96, 112, 128, 100, 160, 81];
    let cfg = MetaConfig { inner_lr: 0.3, ..MetaConfig::default() };
    let mut m = MetaModel::<f64>::zeros(cfg, 3, &rln, &[81, 20, 2], &[]);
    m.rln_p = init(&m.rln, &mut rng);
    m.theta0 = init(&m.pln, &mut rng);
    let (p, s, bi, bo) = (1, 60, 16, 64);
    let t = Trajectory {
        p,
        s,
        bi,
        bo,
        d: 3,
        ycols: 2,
        inner_x: rng.vec(p * s * bi * 3, -1.5, 1.5),
        inner_y: rng.vec(p * s * bi * 2, -1.5, 1.5),
        outer_x: rng.vec(p * bo * 3, -1.5, 1.5),
        outer_y: rng.vec(p * bo * 2, -1.5, 1.5),
    };
    let (m, t) = (m.cast::<f32>(), t.cast::<f32>());
    let pool1 = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool1.install(|| {
        pool::release();
        let est = estimate(&m, &t, 1).total() as f64;
        let before = NOW.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        drop(cpu::meta_grad(&m, &t).unwrap());
        let peak = (PEAK.load(Ordering::SeqCst) - before) as f64;
        println!("RLN of distinct widths: allocated at most {peak:.0} bytes, estimated {est:.0} ({:.2}×)", est / peak);
        assert!(peak <= est, "RLN of distinct widths: allocated {peak} bytes, more than the estimate {est}");
        assert!(
            est <= 2.5 * peak,
            "RLN of distinct widths: the estimate {est} is far above the {peak} bytes allocated"
        );
    });
}
