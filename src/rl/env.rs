//! The environments: procedural, seeded, one episode per value. A batch of
//! `B` episodes is a `Vec` of them, stepped in batch order so that every
//! random draw comes from one generator in a fixed order.
//!
//! Both tasks can only be solved by learning within the episode: what is
//! rewarded (the target cue, the reward's location) is drawn anew for every
//! episode and never shown directly.

use rand::RngExt;

use crate::error::{Error, Result};
use crate::train::TaskRng;

/// One episode of an environment, as the agent sees it.
pub trait Env {
    /// Observation features per step (the environment's own part of the
    /// input; the agent adds previous reward, previous action and time).
    fn obs_size(&self) -> usize;
    /// Number of actions `A`.
    fn actions(&self) -> usize;
    /// The observation of step `t` into `out` (`(obs_size)`).
    fn observe(&self, t: usize, out: &mut [f32]);
    /// Takes `action` at step `t` and returns the reward. Fails when the
    /// action is not in `0..A`.
    fn act(&mut self, t: usize, action: usize, rng: &mut TaskRng) -> Result<f32>;
}

fn check_action(env: &dyn Env, action: usize) -> Result<()> {
    if action >= env.actions() {
        return Err(Error::Range {
            arg: "action".into(),
            value: action as f64,
            expected: format!("an action in 0..{} (this environment has {} actions)", env.actions(), env.actions()),
        });
    }
    Ok(())
}

/// Settings of the cue-reward association task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CueRewardConfig {
    /// Cues drawn per episode (one of them is the target).
    pub cues: usize,
    /// Bits per cue (each ±1).
    pub bits: usize,
    /// Steps per episode; trials of [`CueReward::TRIAL`] steps repeat until it ends.
    pub steps: usize,
}

impl Default for CueRewardConfig {
    fn default() -> Self {
        CueRewardConfig { cues: 4, bits: 20, steps: 120 }
    }
}

impl CueRewardConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.cues < 2 {
            return Err(Error::Range {
                arg: "cues".into(),
                value: self.cues as f64,
                expected: "at least 2 (a trial shows two different cues)".into(),
            });
        }
        if self.bits == 0 {
            return Err(Error::Empty { arg: "bits".into() });
        }
        if self.steps == 0 {
            return Err(Error::Empty { arg: "steps (episode length)".into() });
        }
        Ok(())
    }
}

/// Cue-reward association (Miconi et al. 2019, §4.1).
///
/// Every episode draws `cues` random cues of `bits` values ±1 and picks one
/// of them as the target. The episode is a sequence of trials of
/// [`CueReward::TRIAL`] = 5 steps:
///
/// | step of the trial | shown | reward |
/// |---|---|---|
/// | 0 | nothing | 0 |
/// | 1 | cue `c₁` | 0 |
/// | 2 | cue `c₂ ≠ c₁` | 0 |
/// | 3 | the go bit | +1 if the action is 1 exactly when the target is `c₁` or `c₂`, else −1 |
/// | 4 | nothing | 0 |
///
/// Actions are 0 and 1; only the one on the go step counts. The observation
/// is the cue bits followed by the go bit (`bits + 1` features). The pair
/// `(c₁, c₂)` is drawn uniformly among ordered pairs of different cues, so
/// the target is in the pair half of the time: answering at random, or always
/// the same, earns 0 on average.
#[derive(Clone, Debug, PartialEq)]
pub struct CueReward {
    cfg: CueRewardConfig,
    /// `(cues, bits)`.
    cue_bits: Vec<f32>,
    target: usize,
    /// The two cues of the current trial.
    pair: (usize, usize),
}

impl CueReward {
    /// Steps per trial.
    pub const TRIAL: usize = 5;
    /// The step of a trial with the go bit (where the answer counts).
    pub const GO: usize = 3;

    /// A fresh episode: new cues, a new target, the first trial's pair.
    pub fn new(cfg: CueRewardConfig, rng: &mut TaskRng) -> Result<Self> {
        cfg.validate()?;
        let cue_bits = (0..cfg.cues * cfg.bits).map(|_| if rng.random_bool(0.5) { 1.0 } else { -1.0 }).collect();
        let target = rng.random_range(0..cfg.cues);
        let mut env = CueReward { cfg, cue_bits, target, pair: (0, 1) };
        env.draw_pair(rng);
        Ok(env)
    }

    /// An episode with given cues `(cues, bits)`, target and first pair (for tests).
    pub fn with(cfg: CueRewardConfig, cue_bits: Vec<f32>, target: usize, pair: (usize, usize)) -> Result<Self> {
        cfg.validate()?;
        if cue_bits.len() != cfg.cues * cfg.bits {
            return Err(Error::Shape {
                arg: "cue_bits".into(),
                expected: crate::Shape(vec![cfg.cues, cfg.bits]),
                got: cue_bits.len(),
                note: "one row per cue".into(),
            });
        }
        if target >= cfg.cues || pair.0 >= cfg.cues || pair.1 >= cfg.cues || pair.0 == pair.1 {
            return Err(Error::Config {
                arg: "target, pair".into(),
                message: format!(
                    "need a target and two different cues in 0..{}; got target {target}, pair {pair:?}",
                    cfg.cues
                ),
            });
        }
        Ok(CueReward { cfg, cue_bits, target, pair })
    }

    /// The target cue of this episode.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The cues of the current trial.
    pub fn pair(&self) -> (usize, usize) {
        self.pair
    }

    /// The correct answer of the current trial (1: the target is in the pair).
    pub fn answer(&self) -> usize {
        (self.pair.0 == self.target || self.pair.1 == self.target) as usize
    }

    fn draw_pair(&mut self, rng: &mut TaskRng) {
        let a = rng.random_range(0..self.cfg.cues);
        // A uniform second cue among the other `cues − 1`.
        let mut b = rng.random_range(0..self.cfg.cues - 1);
        if b >= a {
            b += 1;
        }
        self.pair = (a, b);
    }
}

impl Env for CueReward {
    fn obs_size(&self) -> usize {
        self.cfg.bits + 1
    }

    fn actions(&self) -> usize {
        2
    }

    fn observe(&self, t: usize, out: &mut [f32]) {
        out.fill(0.0);
        let bits = self.cfg.bits;
        match t % Self::TRIAL {
            1 => out[..bits].copy_from_slice(&self.cue_bits[self.pair.0 * bits..(self.pair.0 + 1) * bits]),
            2 => out[..bits].copy_from_slice(&self.cue_bits[self.pair.1 * bits..(self.pair.1 + 1) * bits]),
            Self::GO => out[bits] = 1.0,
            _ => {}
        }
    }

    fn act(&mut self, t: usize, action: usize, rng: &mut TaskRng) -> Result<f32> {
        check_action(self, action)?;
        let r = match t % Self::TRIAL {
            Self::GO => {
                if action == self.answer() {
                    1.0
                } else {
                    -1.0
                }
            }
            _ => 0.0,
        };
        // The next trial's cues are drawn at the end of the trial.
        if t % Self::TRIAL == Self::TRIAL - 1 {
            self.draw_pair(rng);
        }
        Ok(r)
    }
}

/// Settings of the grid maze.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MazeConfig {
    /// Side of the square grid, odd and ≥ 5 (walls included).
    pub size: usize,
    /// Steps per episode.
    pub steps: usize,
    /// Reward for reaching the reward cell.
    pub reward: f32,
    /// Reward (a cost when negative) for bumping into a wall.
    pub wall: f32,
}

impl Default for MazeConfig {
    fn default() -> Self {
        MazeConfig { size: 11, steps: 200, reward: 10.0, wall: -0.1 }
    }
}

impl MazeConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.size < 5 || self.size.is_multiple_of(2) {
            return Err(Error::Range {
                arg: "maze size".into(),
                value: self.size as f64,
                expected: "an odd number ≥ 5 (border walls and pillars at even coordinates)".into(),
            });
        }
        if self.steps == 0 {
            return Err(Error::Empty { arg: "steps (episode length)".into() });
        }
        if !(self.reward.is_finite() && self.wall.is_finite()) {
            return Err(Error::Config { arg: "reward, wall".into(), message: "rewards must be finite".into() });
        }
        Ok(())
    }
}

/// The grid maze (Miconi et al. 2019, §4.2).
///
/// A `size × size` grid whose walls are the border and every cell whose row
/// and column are both even; the other cells are free. Every episode places
/// the reward on a random free cell and the agent on another. The agent sees
/// its 3×3 neighbourhood (1 for a wall, 0 for a free cell, row-major; the
/// reward is invisible) and moves up, right, down or left (actions 0..4).
/// Moving into a wall leaves it in place and costs `wall`; entering the
/// reward cell pays `reward` and teleports the agent to a random free cell
/// other than the reward's.
#[derive(Clone, Debug, PartialEq)]
pub struct Maze {
    cfg: MazeConfig,
    /// The reward cell and the agent's cell, `(row, column)`.
    goal: (usize, usize),
    pos: (usize, usize),
}

/// Row and column steps of the four actions: up, right, down, left.
pub const MOVES: [(isize, isize); 4] = [(-1, 0), (0, 1), (1, 0), (0, -1)];

impl Maze {
    /// A fresh episode: random reward cell, random start elsewhere.
    pub fn new(cfg: MazeConfig, rng: &mut TaskRng) -> Result<Self> {
        cfg.validate()?;
        let goal = Self::random_free(&cfg, rng, None);
        let pos = Self::random_free(&cfg, rng, Some(goal));
        Ok(Maze { cfg, goal, pos })
    }

    /// An episode with the reward and the agent at given cells (for tests).
    pub fn with(cfg: MazeConfig, goal: (usize, usize), pos: (usize, usize)) -> Result<Self> {
        cfg.validate()?;
        for (name, c) in [("goal", goal), ("pos", pos)] {
            if c.0 >= cfg.size || c.1 >= cfg.size || Self::wall_at(&cfg, c.0, c.1) {
                return Err(Error::Config {
                    arg: name.into(),
                    message: format!("cell {c:?} is a wall or outside the {0}×{0} grid", cfg.size),
                });
            }
        }
        Ok(Maze { cfg, goal, pos })
    }

    /// Whether cell `(r, c)` of a maze with these settings is a wall.
    pub fn wall_at(cfg: &MazeConfig, r: usize, c: usize) -> bool {
        let s = cfg.size;
        r == 0 || c == 0 || r == s - 1 || c == s - 1 || (r.is_multiple_of(2) && c.is_multiple_of(2))
    }

    /// The free cells in row-major order.
    pub fn free_cells(cfg: &MazeConfig) -> Vec<(usize, usize)> {
        let s = cfg.size;
        (0..s * s).map(|k| (k / s, k % s)).filter(|&(r, c)| !Self::wall_at(cfg, r, c)).collect()
    }

    fn random_free(cfg: &MazeConfig, rng: &mut TaskRng, not: Option<(usize, usize)>) -> (usize, usize) {
        let free: Vec<_> = Self::free_cells(cfg).into_iter().filter(|&c| Some(c) != not).collect();
        free[rng.random_range(0..free.len())]
    }

    /// The agent's cell.
    pub fn pos(&self) -> (usize, usize) {
        self.pos
    }

    /// The reward's cell.
    pub fn goal(&self) -> (usize, usize) {
        self.goal
    }
}

impl Env for Maze {
    fn obs_size(&self) -> usize {
        9
    }

    fn actions(&self) -> usize {
        4
    }

    fn observe(&self, _t: usize, out: &mut [f32]) {
        let (r, c) = self.pos;
        for dr in 0..3 {
            for dc in 0..3 {
                // The agent is never on the border, so r − 1 + dr is in the grid.
                out[dr * 3 + dc] = Self::wall_at(&self.cfg, r + dr - 1, c + dc - 1) as u8 as f32;
            }
        }
    }

    fn act(&mut self, _t: usize, action: usize, rng: &mut TaskRng) -> Result<f32> {
        check_action(self, action)?;
        let (dr, dc) = MOVES[action];
        let (r, c) = ((self.pos.0 as isize + dr) as usize, (self.pos.1 as isize + dc) as usize);
        if Self::wall_at(&self.cfg, r, c) {
            return Ok(self.cfg.wall);
        }
        self.pos = (r, c);
        if self.pos == self.goal {
            self.pos = Self::random_free(&self.cfg, rng, Some(self.goal));
            return Ok(self.cfg.reward);
        }
        Ok(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::episode_rng;

    fn cue_env(target: usize, pair: (usize, usize)) -> CueReward {
        let cfg = CueRewardConfig { cues: 4, bits: 3, steps: 20 };
        let bits = vec![1., 1., 1., -1., -1., -1., 1., -1., 1., -1., 1., -1.];
        CueReward::with(cfg, bits, target, pair).unwrap()
    }

    #[test]
    fn cue_reward_rule_on_hand_written_trials() {
        let mut rng = episode_rng(0);
        // (target, pair, action on go, expected reward)
        let cases = [
            (2, (2, 0), 1, 1.0),
            (2, (0, 2), 1, 1.0),
            (2, (0, 2), 0, -1.0),
            (2, (0, 1), 0, 1.0),
            (2, (0, 1), 1, -1.0),
            (3, (1, 2), 1, -1.0),
            (3, (3, 1), 0, -1.0),
        ];
        for (target, pair, action, want) in cases {
            let mut env = cue_env(target, pair);
            // Steps 0, 1, 2 pay nothing whatever the action.
            for t in 0..3 {
                assert_eq!(env.act(t, 1, &mut rng).unwrap(), 0.0);
                assert_eq!(env.act(t, 0, &mut rng).unwrap(), 0.0);
            }
            assert_eq!(env.act(3, action, &mut rng).unwrap(), want, "target {target} pair {pair:?} action {action}");
            // Steps of the next trial index the trial by t mod 5.
            let mut env = cue_env(target, pair);
            assert_eq!(env.act(8, action, &mut rng).unwrap(), want);
        }
    }

    #[test]
    fn cue_reward_observations() {
        let env = cue_env(1, (2, 0));
        let mut o = vec![9.0; 4];
        env.observe(0, &mut o);
        assert_eq!(o, [0., 0., 0., 0.]);
        env.observe(1, &mut o);
        assert_eq!(o, [1., -1., 1., 0.]);
        env.observe(2, &mut o);
        assert_eq!(o, [1., 1., 1., 0.]);
        env.observe(3, &mut o);
        assert_eq!(o, [0., 0., 0., 1.]);
        env.observe(4, &mut o);
        assert_eq!(o, [0., 0., 0., 0.]);
        env.observe(6, &mut o);
        assert_eq!(o, [1., -1., 1., 0.]);
    }

    #[test]
    fn cue_reward_new_trial_after_five_steps_and_balanced_pairs() {
        let cfg = CueRewardConfig::default();
        let mut rng = episode_rng(7);
        let mut env = CueReward::new(cfg, &mut rng).unwrap();
        let mut with_target = 0;
        let trials = 4000;
        for k in 0..trials {
            let p = env.pair();
            assert_ne!(p.0, p.1);
            with_target += env.answer();
            for s in 0..5 {
                env.act(k * 5 + s, 0, &mut rng).unwrap();
                if s < 4 {
                    assert_eq!(env.pair(), p, "the pair changes only at the end of a trial");
                }
            }
        }
        // The target is in half of the pairs (3 of the 6 unordered pairs of 4 cues).
        let frac = with_target as f64 / trials as f64;
        assert!((frac - 0.5).abs() < 0.03, "target in {frac} of the trials");
    }

    #[test]
    fn bad_action_is_an_error() {
        let mut rng = episode_rng(0);
        let mut env = cue_env(0, (0, 1));
        let e = env.act(3, 2, &mut rng).unwrap_err().to_string();
        assert!(e.contains("action") && e.contains("0..2"), "{e}");
        let mut m = Maze::new(MazeConfig::default(), &mut rng).unwrap();
        assert!(m.act(0, 4, &mut rng).is_err());
    }

    #[test]
    fn maze_walls() {
        let cfg = MazeConfig::default();
        let free = Maze::free_cells(&cfg);
        // 9×9 interior minus the 4×4 pillars at even coordinates.
        assert_eq!(free.len(), 81 - 16);
        assert!(Maze::wall_at(&cfg, 0, 5) && Maze::wall_at(&cfg, 10, 3) && Maze::wall_at(&cfg, 4, 0));
        assert!(Maze::wall_at(&cfg, 2, 2) && Maze::wall_at(&cfg, 8, 4));
        assert!(!Maze::wall_at(&cfg, 1, 1) && !Maze::wall_at(&cfg, 2, 3) && !Maze::wall_at(&cfg, 5, 5));
    }

    #[test]
    fn maze_moves_bumps_and_observation() {
        let cfg = MazeConfig::default();
        let mut rng = episode_rng(1);
        let mut m = Maze::with(cfg, (9, 9), (1, 1)).unwrap();
        let mut o = vec![0.0; 9];
        m.observe(0, &mut o);
        // Top-left corner: border above and to the left, pillar (2,2) below right.
        assert_eq!(o, [1., 1., 1., 1., 0., 0., 1., 0., 1.]);
        // Up and left are walls: no move, wall cost.
        assert_eq!(m.act(0, 0, &mut rng).unwrap(), -0.1);
        assert_eq!(m.act(0, 3, &mut rng).unwrap(), -0.1);
        assert_eq!(m.pos(), (1, 1));
        // Right: free.
        assert_eq!(m.act(0, 1, &mut rng).unwrap(), 0.0);
        assert_eq!(m.pos(), (1, 2));
        // Down from (1,2) is the pillar (2,2).
        assert_eq!(m.act(0, 2, &mut rng).unwrap(), -0.1);
        assert_eq!(m.pos(), (1, 2));
        m.observe(0, &mut o);
        assert_eq!(o, [1., 1., 1., 0., 0., 0., 0., 1., 0.]);
        // In a corridor cell (3, 2): pillars at (2,2) and (4,2) above and below.
        let m = Maze::with(cfg, (9, 9), (3, 2)).unwrap();
        m.observe(0, &mut o);
        assert_eq!(o, [0., 1., 0., 0., 0., 0., 0., 1., 0.]);
    }

    #[test]
    fn maze_reward_teleports() {
        let cfg = MazeConfig::default();
        let mut rng = episode_rng(3);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut m = Maze::with(cfg, (5, 6), (5, 5)).unwrap();
            assert_eq!(m.act(0, 1, &mut rng).unwrap(), 10.0);
            let p = m.pos();
            assert_ne!(p, (5, 6), "never teleported onto the reward");
            assert!(!Maze::wall_at(&cfg, p.0, p.1));
            assert_eq!(m.goal(), (5, 6), "the reward stays");
            seen.insert(p);
        }
        // Random cells, not one fixed place.
        assert!(seen.len() > 30, "{} distinct cells", seen.len());
    }

    #[test]
    fn maze_new_places_agent_off_the_reward() {
        let mut rng = episode_rng(5);
        for _ in 0..100 {
            let m = Maze::new(MazeConfig::default(), &mut rng).unwrap();
            assert_ne!(m.pos(), m.goal());
        }
    }
}
