//! Progress display: an indicatif bar on a terminal, throttled plain lines elsewhere.
//!
//! A bar redraws in place, which in a log file (CI, nohup, a cluster job) becomes thousands
//! of carriage-return fragments; so off a terminal we print one self-contained line at most
//! every N seconds (10 by default, `TRAINER_PROGRESS_SECS` overrides), which greps and tails
//! well: `epoch 3/15 step 1200/7020 loss 0.3121 acc 88.4% 2410 img/s eta 4m12s` (a text run
//! counts tokens: `tok/s`, [`Throughput`]).
//!
//! Speed and ETA are this process's own ([`Pace`]): the steps it ran over the time since it
//! started, so a resumed run's steps before the restart never count as done in no time.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Progress as Mode;
use crate::config::Throughput;
use crate::errln;

/// Default seconds between two plain lines.
const PLAIN_EVERY_SECS: f64 = 10.0;

/// The run's progress display; see the module docs.
pub struct Progress {
    display: Display,
    total_steps: usize,
    total_epochs: usize,
    pace: Pace,
    unit: Throughput,
}

enum Display {
    Bar(ProgressBar),
    Plain {
        every: Duration,
        last_print: Option<Instant>,
        /// The latest line not yet printed (printed by `finish`).
        pending: Option<String>,
    },
    Off,
}

impl Progress {
    /// `mode`: auto and bar draw a bar on a terminal (stderr); auto and plain print lines off
    /// one. Bar off a terminal falls back to plain lines (a bar cannot be drawn there, and
    /// silence would hide a hung run); plain on a terminal stays plain. `start_step`: the
    /// steps done before this process (a resumed run's checkpoint), 0 for a new run; `unit`:
    /// how the speed is counted (the data's).
    pub fn new(
        mode: Mode,
        total_steps: usize,
        steps_per_epoch: usize,
        start_step: usize,
        unit: Throughput,
    ) -> Progress {
        Progress::starting_at(
            Instant::now(),
            mode,
            total_steps,
            steps_per_epoch,
            start_step,
            unit,
        )
    }

    fn starting_at(
        now: Instant,
        mode: Mode,
        total_steps: usize,
        steps_per_epoch: usize,
        start_step: usize,
        unit: Throughput,
    ) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let display = match mode {
            Mode::Off => Display::Off,
            Mode::Auto | Mode::Bar if terminal => Display::Bar(bar(total_steps, start_step)),
            Mode::Auto | Mode::Bar | Mode::Plain => Display::Plain {
                every: plain_interval(std::env::var("TRAINER_PROGRESS_SECS").ok().as_deref()),
                last_print: None,
                pending: None,
            },
        };
        Progress {
            display,
            total_steps,
            total_epochs: total_steps.div_ceil(steps_per_epoch.max(1)),
            pace: Pace::new(now, start_step),
            unit,
        }
    }

    /// One step done. `step`: optimizer steps done (1 after the first); `epoch`: the epoch
    /// running, 1-based; `accuracy` in [0, 1], None for losses without one (mse); `images`:
    /// the step's batch.
    pub fn update(
        &mut self,
        step: usize,
        epoch: usize,
        loss: f64,
        accuracy: Option<f64>,
        images: usize,
    ) {
        let now = Instant::now();
        let s = self.status(now, step, epoch, loss, accuracy, images);
        match &mut self.display {
            Display::Off => {}
            Display::Bar(bar) => {
                bar.set_position(step as u64);
                bar.set_prefix(format!("{epoch}/{}", self.total_epochs));
                bar.set_message(format!("{} eta {}", metrics(&s), eta_text(&s)));
            }
            Display::Plain {
                every,
                last_print,
                pending,
            } => {
                let line = format_line(&s);
                if last_print.is_none_or(|t| now - t >= *every) {
                    errln!("{line}");
                    *last_print = Some(now);
                    *pending = None;
                } else {
                    *pending = Some(line);
                }
            }
        }
    }

    /// A line printed above the bar (or among the plain lines), in every mode: messages such
    /// as "saved checkpoint" are not progress.
    pub fn message(&self, text: &str) {
        match &self.display {
            Display::Bar(bar) => bar.println(text),
            _ => errln!("{text}"),
        }
    }

    /// Ends the display: the bar stays on screen as it is; plain mode prints the last state
    /// if the throttle held it back.
    pub fn finish(&mut self) {
        match &mut self.display {
            Display::Bar(bar) => bar.abandon(),
            Display::Plain { pending, .. } => {
                if let Some(line) = pending.take() {
                    errln!("{line}");
                }
            }
            Display::Off => {}
        }
    }
}

/// The bar starts at `start_step`. Its ETA is ours (in the message): indicatif's own would
/// take a resumed run's jump from 0 to `start_step` as speed.
fn bar(total_steps: usize, start_step: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total_steps as u64), ProgressDrawTarget::stderr());
    // The template is a constant; if indicatif ever refused it, its default style is fine.
    if let Ok(style) = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(start_step as u64);
    bar
}

/// `TRAINER_PROGRESS_SECS` (seconds, fractions allowed; 0 prints every update) or 10.
fn plain_interval(env: Option<&str>) -> Duration {
    env.and_then(|s| s.trim().parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(Duration::from_secs_f64(PLAIN_EVERY_SECS))
}

/// What one progress line shows.
#[derive(Clone, Debug)]
pub struct Status {
    pub epoch: usize,
    pub epochs: usize,
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    pub accuracy: Option<f64>,
    /// Images (or tokens) a second; None until a step of this process is done.
    pub per_s: Option<f64>,
    /// What `per_s` counts.
    pub unit: Throughput,
    pub eta: Option<Duration>,
}

impl Progress {
    /// The line's figures at `now`, after the step `step` of `images` images.
    fn status(
        &mut self,
        now: Instant,
        step: usize,
        epoch: usize,
        loss: f64,
        accuracy: Option<f64>,
        images: usize,
    ) -> Status {
        self.pace.images += images as u64;
        Status {
            epoch,
            epochs: self.total_epochs,
            step,
            steps: self.total_steps,
            loss,
            accuracy,
            per_s: self.pace.img_per_s(now).map(|r| self.unit.of(r)),
            unit: self.unit,
            eta: self.pace.eta(now, step, self.total_steps),
        }
    }
}

/// This process's pace: the steps and images it ran since it started.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    start: Instant,
    start_step: usize,
    images: u64,
}

impl Pace {
    /// At `start`, `start_step` steps were done (by this process's predecessors).
    pub fn new(start: Instant, start_step: usize) -> Pace {
        Pace {
            start,
            start_step,
            images: 0,
        }
    }

    /// Images a second since the start; None before any image (or any time) has passed.
    pub fn img_per_s(&self, now: Instant) -> Option<f64> {
        let secs = now.saturating_duration_since(self.start).as_secs_f64();
        (self.images > 0 && secs > 0.0).then(|| self.images as f64 / secs)
    }

    /// The time left at this pace, with `step` of `total` steps done.
    pub fn eta(&self, now: Instant, step: usize, total: usize) -> Option<Duration> {
        eta(
            now.saturating_duration_since(self.start),
            step.saturating_sub(self.start_step),
            total.saturating_sub(step),
        )
    }
}

/// The ETA from the pace so far: `elapsed / done × remaining` (None before a step is done).
pub fn eta(elapsed: Duration, done: usize, remaining: usize) -> Option<Duration> {
    if done == 0 {
        return None;
    }
    Duration::try_from_secs_f64(elapsed.as_secs_f64() / done as f64 * remaining as f64).ok()
}

/// `epoch 3/15 step 1200/7020 loss 0.3121 acc 88.4% 2410 img/s eta 4m12s`.
pub fn format_line(s: &Status) -> String {
    format!(
        "epoch {}/{} step {}/{} {} eta {}",
        s.epoch,
        s.epochs,
        s.step,
        s.steps,
        metrics(s),
        eta_text(s)
    )
}

/// `loss 0.3121 acc 88.4% 2410 img/s` (or `tok/s`; no `acc` without an accuracy, no speed before it is
/// known).
fn metrics(s: &Status) -> String {
    let acc = s
        .accuracy
        .map_or(String::new(), |a| format!(" acc {:.1}%", a * 100.0));
    let speed = s
        .per_s
        .map_or(String::new(), |r| format!(" {r:.0} {}", s.unit.short));
    format!("loss {:.4}{acc}{speed}", s.loss)
}

fn eta_text(s: &Status) -> String {
    s.eta.map_or("?".into(), format_eta)
}

/// Two units, largest first: `42s`, `4m12s`, `3h07m`, `2d05h`.
pub fn format_eta(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    let (days, hours, mins, secs) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{mins:02}m")
    } else if mins > 0 {
        format!("{mins}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_as_documented() {
        let s = Status {
            epoch: 3,
            epochs: 15,
            step: 1200,
            steps: 7020,
            loss: 0.31214,
            accuracy: Some(0.8841),
            per_s: Some(2410.4),
            unit: Throughput::IMAGES,
            eta: Some(Duration::from_secs(252)),
        };
        assert_eq!(
            format_line(&s),
            "epoch 3/15 step 1200/7020 loss 0.3121 acc 88.4% 2410 img/s eta 4m12s"
        );
        let s = Status {
            accuracy: None,
            eta: None,
            loss: f64::NAN,
            ..s
        };
        assert_eq!(
            format_line(&s),
            "epoch 3/15 step 1200/7020 loss NaN 2410 img/s eta ?"
        );
        // No speed before it is known: never "0 img/s".
        let s = Status { per_s: None, ..s };
        assert_eq!(format_line(&s), "epoch 3/15 step 1200/7020 loss NaN eta ?");
    }

    #[test]
    fn eta_formats() {
        let f = |s| format_eta(Duration::from_secs(s));
        assert_eq!(f(0), "0s");
        assert_eq!(f(59), "59s");
        assert_eq!(f(60), "1m00s");
        assert_eq!(f(252), "4m12s");
        assert_eq!(f(3600 * 3 + 7 * 60 + 30), "3h07m");
        assert_eq!(f(86400 * 2 + 5 * 3600), "2d05h");
        assert_eq!(format_eta(Duration::from_millis(59_600)), "1m00s");
    }

    #[test]
    fn eta_from_pace() {
        assert_eq!(eta(Duration::from_secs(10), 0, 100), None);
        assert_eq!(
            eta(Duration::from_secs(10), 100, 300),
            Some(Duration::from_secs(30))
        );
        assert_eq!(eta(Duration::from_secs(10), 5, 0), Some(Duration::ZERO));
    }

    #[test]
    fn interval_from_env() {
        assert_eq!(plain_interval(None), Duration::from_secs(10));
        assert_eq!(plain_interval(Some("0")), Duration::ZERO);
        assert_eq!(plain_interval(Some("0.5")), Duration::from_millis(500));
        assert_eq!(plain_interval(Some("soon")), Duration::from_secs(10));
        assert_eq!(plain_interval(Some("-1")), Duration::from_secs(10));
    }

    #[test]
    fn epochs_round_up() {
        let p = Progress::new(Mode::Off, 7020, 468, 0, Throughput::IMAGES);
        assert_eq!(p.total_epochs, 15);
    }

    /// The lines of a run, with a fake clock: `updates` are (seconds since the process
    /// started, step, images of that step).
    fn lines(start_step: usize, total: usize, updates: &[(f64, usize, usize)]) -> Vec<String> {
        lines_in(Throughput::IMAGES, start_step, total, updates)
    }

    fn lines_in(
        unit: Throughput,
        start_step: usize,
        total: usize,
        updates: &[(f64, usize, usize)],
    ) -> Vec<String> {
        let t0 = Instant::now();
        let mut p = Progress::starting_at(t0, Mode::Off, total, 100, start_step, unit);
        updates
            .iter()
            .map(|&(secs, step, images)| {
                let now = t0 + Duration::from_secs_f64(secs);
                let epoch = step / 100 + 1;
                format_line(&p.status(now, step, epoch, 0.5, None, images))
            })
            .collect()
    }

    /// The first line already has the speed of the first step, not "0 img/s".
    #[test]
    fn speed_is_known_from_the_first_step() {
        let l = lines(0, 1000, &[(0.5, 1, 64), (1.0, 2, 64)]);
        assert_eq!(
            l[0],
            "epoch 1/10 step 1/1000 loss 0.5000 128 img/s eta 8m20s"
        );
        assert_eq!(
            l[1],
            "epoch 1/10 step 2/1000 loss 0.5000 128 img/s eta 8m19s"
        );
    }

    /// A process resumed at step 5000 counts only its own steps over its own time: 10 steps
    /// in 2 s leave 4990 steps, 998 s; the steps before the restart are not "done in no
    /// time" (which would say a few seconds).
    #[test]
    fn after_a_resume_the_pace_is_this_process_own() {
        let l = lines(5000, 10000, &[(0.2, 5001, 128), (2.0, 5010, 9 * 128)]);
        assert_eq!(
            l[0],
            "epoch 51/100 step 5001/10000 loss 0.5000 640 img/s eta 16m40s"
        );
        assert_eq!(
            l[1],
            "epoch 51/100 step 5010/10000 loss 0.5000 640 img/s eta 16m38s"
        );
    }

    /// A text run counts tokens: 64 windows of 32 tokens in 0.5 s are 4096 tokens a second.
    #[test]
    fn text_runs_count_tokens() {
        let text = Throughput {
            short: "tok/s",
            long: "tokens/s",
            per_sample: 32,
        };
        let l = lines_in(text, 0, 1000, &[(0.5, 1, 64)]);
        assert_eq!(
            l[0],
            "epoch 1/10 step 1/1000 loss 0.5000 4096 tok/s eta 8m20s"
        );
    }
}
