//! The actor that watches one target: it connects, holds the connection, learns of its
//! end from the socket's readiness (not by polling), feeds what it saw to the state
//! machine and does what the machine says.
//!
//! A healthy, idle target costs one registered socket and no timer: the kernel's
//! keepalive watches for silent peer death, and the task sleeps until the socket turns
//! readable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::Target;
use crate::machine::{Input, Machine, Next};
use crate::net::{self, Readiness};
use crate::observe::Observer;

/// One target's actor.
pub struct Checker {
    /// The target's settings; shared with the supervisor and the listeners.
    target: Arc<Target>,
    machine: Machine,
    /// Receives every report, synchronously and in order.
    observer: Arc<dyn Observer>,
    /// Cancelled when the target is removed or the sidecar stops.
    cancel: CancellationToken,
    /// The next event sequence number, kept outside the actor so that a restarted
    /// actor continues the numbering instead of repeating event ids.
    seq: Arc<AtomicU64>,
}

impl Checker {
    pub fn new(
        target: Arc<Target>,
        observer: Arc<dyn Observer>,
        cancel: CancellationToken,
        seq: Arc<AtomicU64>,
    ) -> Checker {
        let machine = Machine::new(&target, seq.load(Ordering::Acquire));
        Checker {
            target,
            machine,
            observer,
            cancel,
            seq,
        }
    }

    /// Watches the target until cancelled. Borrows rather than consumes the checker:
    /// the supervisor keeps it in its own task, and a `self` moved into this future
    /// would be stored twice over in every actor.
    pub async fn run(&mut self) {
        self.observer.started(&self.target);
        let mut next = Next::ConnectNow;
        let mut held: Option<TcpStream> = None;
        loop {
            let input = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                input = self.observe(next, &mut held) => input,
            };
            let step = self.machine.on(input, Instant::now(), SystemTime::now());
            self.seq.store(self.machine.next_seq(), Ordering::Release);
            for t in &step.transitions {
                self.observer.transition(&self.target, t);
            }
            next = step.next;
        }
        drop(held);
        self.observer.stopped(&self.target);
    }

    /// Carries out `next` and returns what came of it.
    ///
    /// The connect attempt runs boxed: its future (resolution, per-address timeouts,
    /// the handshake) is the largest state an actor goes through, and inline it would
    /// set the size of every actor's task for all the time it sits holding a healthy
    /// connection. One allocation per attempt is cheap next to the attempt's own
    /// system calls.
    async fn observe(&self, next: Next, held: &mut Option<TcpStream>) -> Input {
        match next {
            Next::ConnectNow => Box::pin(self.attempt(held)).await,
            Next::ConnectAfter(delay) => {
                sleep(delay).await;
                Box::pin(self.attempt(held)).await
            }
            Next::Hold { until } => match held {
                Some(stream) => self.hold(stream, until).await,
                None => Input::Lost("no connection held".into()),
            },
        }
    }

    async fn attempt(&self, held: &mut Option<TcpStream>) -> Input {
        *held = None;
        let t = &self.target;
        let started = Instant::now();
        let result = net::connect(&t.address, t.connect_timeout.get(), &t.keepalive).await;
        self.observer.attempt(t, result.is_ok(), started.elapsed());
        match result {
            Ok(stream) => {
                *held = Some(stream);
                Input::Connected
            }
            Err(e) => Input::ConnectFailed(e.to_string().into()),
        }
    }

    /// Waits until the held connection ends or `until` passes.
    async fn hold(&self, stream: &TcpStream, until: Option<Instant>) -> Input {
        let deadline = async {
            match until {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ready = stream.readable() => {
                    let reason = match ready {
                        Err(e) => net::describe(&e),
                        Ok(()) => match net::drain(stream) {
                            Readiness::Closed(reason) => reason,
                            Readiness::Data(_) | Readiness::Nothing => continue,
                        },
                    };
                    self.observer.lost(&self.target, &reason);
                    return Input::Lost(reason.into());
                }
                () = &mut deadline => return Input::Tick,
            }
        }
    }
}
