//! A progress line on stderr, drawn only on a terminal and only once a run has taken more than
//! a second, so quick runs and pipes see nothing.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SHOW_AFTER: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);
const BAR_WIDTH: usize = 24;

#[derive(Default)]
struct State {
    stage: &'static str,
    done: usize,
    total: usize,
    stop: bool,
}

/// The progress line; dropped or finished, it erases itself.
pub struct Progress {
    state: Arc<Mutex<State>>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing in the background when stderr is a terminal and `enabled`.
    pub fn start(enabled: bool) -> Progress {
        let state = Arc::new(Mutex::new(State::default()));
        let thread = (enabled && std::io::stderr().is_terminal()).then(|| {
            let state = Arc::clone(&state);
            std::thread::spawn(move || draw_until_stopped(&state))
        });
        Progress { state, thread }
    }

    /// Names what is running now.
    pub fn stage(&self, stage: &'static str) {
        if let Ok(mut s) = self.state.lock() {
            s.stage = stage;
            s.done = 0;
            s.total = 0;
        }
    }

    /// A callback that advances the bar of the current stage.
    pub fn counter(&self) -> impl Fn(usize, usize) + Send + Sync + 'static {
        let state = Arc::clone(&self.state);
        move |done, total| {
            if let Ok(mut s) = state.lock() {
                s.done = done;
                s.total = total;
            }
        }
    }

    /// Stops and erases the line.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.stop = true;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

fn draw_until_stopped(state: &Mutex<State>) {
    const SPINNER: [char; 4] = ['|', '/', '-', '\\'];
    let started = Instant::now();
    let mut drawn = false;
    let mut tick = 0usize;
    loop {
        std::thread::sleep(TICK);
        let Ok(s) = state.lock() else { return };
        let mut err = std::io::stderr().lock();
        if s.stop {
            if drawn {
                let _ = write!(err, "\r\x1b[2K");
                let _ = err.flush();
            }
            return;
        }
        if started.elapsed() < SHOW_AFTER || s.stage.is_empty() {
            continue;
        }
        tick += 1;
        let bar = match (s.done * BAR_WIDTH).checked_div(s.total) {
            Some(filled) => {
                let filled = filled.min(BAR_WIDTH);
                format!(
                    " [{}{}] {}/{}",
                    "#".repeat(filled),
                    "-".repeat(BAR_WIDTH - filled),
                    s.done,
                    s.total
                )
            }
            None => String::new(),
        };
        let _ = write!(
            err,
            "\r\x1b[2K{} {}{bar}  {:.1}s",
            SPINNER[tick % SPINNER.len()],
            s.stage,
            started.elapsed().as_secs_f64()
        );
        let _ = err.flush();
        drawn = true;
    }
}
