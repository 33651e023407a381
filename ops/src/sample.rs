//! `skeelo-ops sample`: example ERP events, one JSON object per line.

use std::io::Write;
use std::process::ExitCode;

use rand::SeedableRng;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// How many contracts.
    #[arg(long, default_value_t = 10)]
    contracts: usize,
    /// Most events per contract.
    #[arg(long, default_value_t = 6)]
    max_events: usize,
    /// Contract ids are PREFIX0001, PREFIX0002, …
    #[arg(long, default_value = "DEMO")]
    prefix: String,
    /// Seed, for the same histories every time.
    #[arg(long)]
    seed: Option<u64>,
    /// Publish order: in version order per contract, or shuffled (as separate queues
    /// may deliver them).
    #[arg(long)]
    shuffle: bool,
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut rng = match a.seed {
        Some(s) => rand::rngs::StdRng::seed_from_u64(s),
        None => rand::rngs::StdRng::from_os_rng(),
    };
    let mut events = Vec::new();
    for c in 1..=a.contracts {
        let id = format!("{}{c:04}", a.prefix);
        events.extend(skeelo_domain::sample::history(&mut rng, &id, a.max_events));
    }
    if a.shuffle {
        rand::seq::SliceRandom::shuffle(events.as_mut_slice(), &mut rng);
    }
    let mut out = std::io::stdout().lock();
    for e in events {
        writeln!(out, "{e}")?;
    }
    Ok(ExitCode::SUCCESS)
}
