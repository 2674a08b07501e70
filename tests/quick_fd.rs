use neuroplastic::*;
fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}
#[test]
fn quick() {
    let mut worst = 0.0f64;
    for rule in Rule::ALL {
        for topo in [Topology::Recurrent, Topology::FeedForward] {
            for al in AlphaShape::ALL {
                let mut s = 7u64;
                let (n, xdim, b, t) = (4, 3, 2, 5);
                let mut cfg = if topo == Topology::Recurrent {
                    LayerConfig::recurrent(rule, n, xdim)
                } else {
                    LayerConfig::feed_forward(rule, xdim, n)
                };
                cfg.alpha = al;
                cfg.bias = true;
                cfg.clip = 0.3;
                cfg.modulator = ModulatorConfig {
                    k: 2,
                    activation: ModActivation::Sigmoid,
                    bias: true,
                    fanout: true,
                    fanout_bias: true,
                };
                let mut p = Params::<f64>::zeros(&cfg);
                for (_, v) in p.named_mut() {
                    for e in v.iter_mut() {
                        *e = lcg(&mut s);
                    }
                }
                if let Some(e) = p.eta.first_mut() {
                    *e = 0.3;
                }
                if let Some(e) = p.eta_e.first_mut() {
                    *e = 0.4;
                }
                let xs: Vec<f64> = (0..b * t * xdim).map(|_| lcg(&mut s) * 2.0).collect();
                let mut init = State::<f64>::zeros(&cfg, b);
                for v in [&mut init.h, &mut init.hebb, &mut init.elig] {
                    for e in v.iter_mut() {
                        *e = lcg(&mut s) * 0.2;
                    }
                }
                let dy: Vec<f64> = (0..b * t * n).map(|_| lcg(&mut s)).collect();
                let mut dl = State::<f64>::zeros(&cfg, b);
                for v in [&mut dl.h, &mut dl.hebb, &mut dl.elig] {
                    for e in v.iter_mut() {
                        *e = lcg(&mut s);
                    }
                }
                let loss = |p: &Params<f64>, xs: &[f64], init: &State<f64>| {
                    let (y, last) = reference::forward(&cfg, p, Seq::new(xs, b, t), Some(init)).unwrap();
                    let mut l: f64 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
                    for (a, bb) in [(&last.h, &dl.h), (&last.hebb, &dl.hebb), (&last.elig, &dl.elig)] {
                        l += a.iter().zip(bb.iter()).map(|(a, b)| a * b).sum::<f64>();
                    }
                    l
                };
                let g =
                    reference::backward(&cfg, &p, Seq::new(&xs, b, t), Some(&init), &dy, Some(&dl), Truncation::None)
                        .unwrap();
                let h = 1e-6;
                let names: Vec<&str> = p.named().iter().map(|(n, _)| *n).collect();
                for (pi, name) in names.iter().enumerate() {
                    let len = p.named()[pi].1.len();
                    for e in 0..len {
                        let mut pp = p.clone();
                        pp.named_mut()[pi].1[e] += h;
                        let lp = loss(&pp, &xs, &init);
                        let mut pm = p.clone();
                        pm.named_mut()[pi].1[e] -= h;
                        let lm = loss(&pm, &xs, &init);
                        let fd = (lp - lm) / (2.0 * h);
                        let an = g.params.named()[pi].1[e];
                        let err = (fd - an).abs() / (1e-3 + fd.abs().max(an.abs()));
                        if err > 1e-5 {
                            println!("{rule:?} {topo:?} {al:?} {name}[{e}] fd {fd} an {an}");
                        }
                        worst = worst.max(err);
                    }
                }
                for e in 0..xs.len() {
                    let mut xp = xs.clone();
                    xp[e] += h;
                    let mut xm = xs.clone();
                    xm[e] -= h;
                    let fd = (loss(&p, &xp, &init) - loss(&p, &xm, &init)) / (2.0 * h);
                    let an = g.inputs[e];
                    let err = (fd - an).abs() / (1e-3 + fd.abs().max(an.abs()));
                    if err > 1e-5 {
                        println!("{rule:?} {topo:?} {al:?} input[{e}] fd {fd} an {an}");
                    }
                    worst = worst.max(err);
                }
                for k in 0..3 {
                    let len = [&init.h, &init.hebb, &init.elig][k].len();
                    for e in 0..len {
                        let mut ip = init.clone();
                        [&mut ip.h, &mut ip.hebb, &mut ip.elig][k][e] += h;
                        let mut im = init.clone();
                        [&mut im.h, &mut im.hebb, &mut im.elig][k][e] -= h;
                        let fd = (loss(&p, &xs, &ip) - loss(&p, &xs, &im)) / (2.0 * h);
                        let an = [&g.init.h, &g.init.hebb, &g.init.elig][k][e];
                        let err = (fd - an).abs() / (1e-3 + fd.abs().max(an.abs()));
                        if err > 1e-5 {
                            println!("{rule:?} {topo:?} {al:?} init{k}[{e}] fd {fd} an {an}");
                        }
                        worst = worst.max(err);
                    }
                }
            }
        }
    }
    println!("worst {worst}");
    assert!(worst < 1e-5);
}
