//! A prepared CPU step allocates nothing: `CpuExec::new` lays out every buffer, range table and
//! kernel workspace, so `CpuExec::step` never touches the heap, on any thread. A counting global
//! allocator sees every allocation of every thread (rayon's workers included) while a flag is
//! set. This file holds one test so that no other test allocates beside it.
//!
//! The steps are counted from a thread of rayon's pool (`on_pool`). Called from outside the
//! pool, a step hands the pool one job, and rayon's queue for outside jobs (crossbeam's
//! `Injector`) allocates a block of 63 slots every 63 jobs: one small allocation every 63 steps,
//! outside the step itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use trainer::backend::cpu::{CpuExec, on_pool};

use trainer::config::{self, sections::Checkpointing};
use trainer::nn;
use trainer::tensor::StepCtx;
use trainer::training;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_prepared_resnet_step_allocates_nothing() {
    let loaded = config::load(std::path::Path::new("configs/resnet.toml"), &[]);
    let cfg = loaded
        .result
        .unwrap_or_else(|e| panic!("{}", e.render(&loaded.sources)));
    let g = nn::build_with_batch(&cfg, 6).expect("builds");
    let g = training::training_graph(&g, &cfg.optimizer).expect("differentiates");
    let plan = trainer::schedule::plan(&g, &Checkpointing::None, Default::default()).unwrap();
    let names: Vec<String> = plan
        .launches
        .iter()
        .map(|l| {
            let node = &plan.graph.dag[l.node];
            format!("{} {:?}", node.op.primitive().name(), node.outputs[0].shape)
        })
        .collect();
    let features = plan.graph.features;
    let n = plan.graph.ty(features).numel();
    let mut exec: CpuExec<f32> = CpuExec::new(plan, 3).unwrap();
    let x: Vec<f32> = (0..n).map(|i| ((i % 17) as f32) / 8.0 - 1.0).collect();
    exec.feed(features, &x).unwrap();
    let ctx = |step| StepCtx {
        lr: 0.05,
        step,
        seed: 3,
    };
    exec.step(ctx(1));

    // Whole steps, every thread counted.
    let total = on_pool(|| {
        COUNTING.store(true, Ordering::SeqCst);
        for step in 2..6 {
            exec.step(ctx(step));
        }
        COUNTING.store(false, Ordering::SeqCst);
        ALLOCATIONS.swap(0, Ordering::SeqCst)
    });

    // Which launches allocated (for the message): the counter read after each launch.
    let mut culprits = Vec::with_capacity(names.len());
    let mut seen = 0;
    on_pool(|| {
        COUNTING.store(true, Ordering::SeqCst);
        exec.step_timed(ctx(6), |i, _| {
            let now = ALLOCATIONS.load(Ordering::SeqCst);
            if now > seen {
                culprits.push((i, now - seen));
                seen = now;
            }
        });
        COUNTING.store(false, Ordering::SeqCst);
    });
    let report: Vec<String> = culprits
        .iter()
        .take(20)
        .map(|&(i, k)| format!("  launch {i} ({}): {k}", names[i]))
        .collect();
    assert_eq!(
        total,
        0,
        "{total} allocations in 4 prepared steps; in a timed step:\n{}",
        report.join("\n")
    );
    assert!(exec.read(exec.plan.graph.loss)[0].is_finite());
}
