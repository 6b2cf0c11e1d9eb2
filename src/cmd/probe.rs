//! One-off checks for `tether probe` and `tether wait`, through the same connect path
//! and probes the sidecar uses.

use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};

use crate::config::{self, Address, HumanDuration, Keepalive, Probe, Tls};
use crate::connect::{self, Limits};
use crate::probe::Prober;
use crate::watch::backoff::ReconnectBackoff;

/// Keepalive settings for one-off connections, which are closed right away anyway.
const ONE_OFF_KEEPALIVE: Keepalive = Keepalive {
    idle: HumanDuration(Duration::from_secs(10)),
    interval: HumanDuration(Duration::from_secs(2)),
    count: 3,
};

/// `tether wait` retries quickly: an init container should not sleep long after its
/// dependency came up.
pub const WAIT_BACKOFF: config::Backoff = config::Backoff {
    initial: HumanDuration(Duration::from_millis(100)),
    max: HumanDuration(Duration::from_secs(2)),
    multiplier: 2.0,
    jitter: 0.2,
};

/// The longest a single attempt of `tether wait` may take.
const WAIT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Checks an address once with `probe`; the error says why it is not healthy.
pub async fn probe_once(
    address: &Address,
    probe: &Probe,
    tls: Option<&Tls>,
    limit: Duration,
) -> Result<(), String> {
    let prober = Prober::new(probe, address, tls);
    let limits = Limits {
        connect: limit,
        check: limit,
    };
    let attempt = connect::connect(address, &prober, limits, &ONE_OFF_KEEPALIVE);
    match timeout(limit, attempt).await {
        Ok(Ok(_connection)) => Ok(()),
        Ok(Err(e)) => Err(crate::secrets::mask(&e.to_string()).into_owned()),
        Err(_) => Err(format!("{address}: no answer within {limit:?}")),
    }
}

/// Waits until every address answers or `limit` passes; returns the addresses still
/// failing, with their last error.
/// `tls` gives each address's TLS settings (its host as the server name, unless one was
/// given).
pub async fn wait_all(
    addresses: &[Address],
    probe: &Probe,
    tls: impl Fn(&Address) -> Option<Tls>,
    limit: Duration,
) -> Result<(), Vec<(Address, String)>> {
    let deadline = Instant::now() + limit;
    let mut set = tokio::task::JoinSet::new();
    for address in addresses {
        let address = address.clone();
        let probe = probe.clone();
        let tls = tls(&address);
        set.spawn(async move {
            let result = wait_one(&address, &probe, tls.as_ref(), deadline).await;
            (address, result)
        });
    }
    let mut failed = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (address, result) = joined.expect("a wait task never panics");
        if let Err(e) = result {
            failed.push((address, e));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed)
    }
}

async fn wait_one(
    address: &Address,
    probe: &Probe,
    tls: Option<&Tls>,
    deadline: Instant,
) -> Result<(), String> {
    let started = Instant::now();
    let mut backoff = ReconnectBackoff::new(&WAIT_BACKOFF);
    let mut reported = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".to_owned());
        }
        match probe_once(address, probe, tls, left.min(WAIT_ATTEMPT_TIMEOUT)).await {
            Ok(()) => {
                say(format_args!(
                    "{address} is up (after {:.1?})",
                    started.elapsed()
                ));
                return Ok(());
            }
            Err(e) => {
                if !reported {
                    say(format_args!("waiting for {address}: {e}"));
                    reported = true;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(e);
                }
                sleep(backoff.next_delay().min(left)).await;
                if Instant::now() >= deadline {
                    return Err(e);
                }
            }
        }
    }
}

/// Progress for the person or script watching; a closed stderr must not abort the wait.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `tether probe`: one check, its verdict on standard output.
pub fn once_command(
    address: &Address,
    args: &crate::cli::CheckArgs,
    timeout: Duration,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (probe, client) = match args.probe().and_then(|p| Ok((p, args.tls_client()?))) {
        Ok(both) => both,
        Err(e) => return super::usage_error(&e),
    };
    let tls = client.and_then(|c| args.tls(address, &c));
    super::block_on(async {
        Ok::<_, std::convert::Infallible>(
            match probe_once(address, &probe, tls.as_ref(), timeout).await {
                Ok(()) => {
                    println!("{address} is healthy");
                    ExitCode::from(crate::exit::OK)
                }
                Err(e) => {
                    println!("{address} is not healthy: {e}");
                    ExitCode::from(crate::exit::FAILURE)
                }
            },
        )
    })
}

/// `tether wait`: every address healthy within `timeout`, or the ones that were not.
pub fn wait_command(
    addresses: &[Address],
    args: &crate::cli::CheckArgs,
    timeout: Duration,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (probe, client) = match args.probe().and_then(|p| Ok((p, args.tls_client()?))) {
        Ok(both) => both,
        Err(e) => return super::usage_error(&e),
    };
    let tls = |address: &Address| client.as_ref().and_then(|c| args.tls(address, c));
    super::block_on(async {
        Ok::<_, std::convert::Infallible>(match wait_all(addresses, &probe, tls, timeout).await {
            Ok(()) => ExitCode::from(crate::exit::OK),
            Err(failed) => {
                for (address, error) in failed {
                    eprintln!("{address} not healthy after {timeout:?}: {error}");
                }
                ExitCode::from(crate::exit::FAILURE)
            }
        })
    })
}
