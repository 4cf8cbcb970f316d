//! `crmbridge-bench`: runs the load, cold-start and cost benchmarks and
//! writes one Markdown report and one JSON file. `infra/bench.sh` builds
//! everything in release mode, starts the emulator and calls this.

mod coldstart;
mod cost;
mod counting;
mod import;
mod load;
mod peers;
mod relay;
mod serve;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Directory with the `crmbridge` binary the load, peers' and import
    /// benchmarks start as `crmbridge serve` (infra/bench.sh: the serve
    /// profile).
    #[arg(long, default_value = "target/serve")]
    bin_dir: PathBuf,
    /// Directory with the Lambda bootstraps (the five functions and
    /// hello-lambda), built with the release profile as `cargo lambda`
    /// builds them.
    #[arg(long, default_value = "target/release")]
    lambda_dir: PathBuf,
    /// Connection pairs the load is spread over.
    #[arg(long, default_value_t = 64)]
    pairs: usize,
    /// Concurrent load-generator connections.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Cold-start rounds per function (median reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Events per cost path.
    #[arg(long, default_value_t = 100)]
    cost_events: u64,
    /// The mapping criterion benchmark's time per event, in ns (from infra/bench.sh).
    #[arg(long)]
    mapping_ns: Option<f64>,
    /// Only the load benchmark (e.g. under a profiler).
    #[arg(long)]
    load_only: bool,
    /// Only the peers' workload (webhook → six fields → one
    /// `http.request.send` POST), with --seconds, --concurrency,
    /// --workers and --rate.
    #[arg(long)]
    peers_only: bool,
    /// Dispatch workers of `crmbridge serve` in the peers' workload (its
    /// default).
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Webhooks per second the senders keep to (open loop); without it
    /// they send as fast as answers come.
    #[arg(long)]
    rate: Option<f64>,
    /// HubSpot contacts the import benchmark starts with (30 % as many
    /// notes; a fifth of the people already in KADO).
    #[arg(long, default_value_t = 10_000)]
    import_contacts: usize,
    /// Only the import benchmark.
    #[arg(long)]
    import_only: bool,
    /// Only the Lambda cold starts (needs the emulator, as the full run).
    #[arg(long)]
    cold_only: bool,
    /// Only the cost table, with the warm durations given by --webhook-ms,
    /// --dispatch-ms and --tick-ms instead of measured cold starts.
    #[arg(long)]
    cost_only: bool,
    /// Warm webhook invocation (ms) for --cost-only.
    #[arg(long, default_value_t = 5.0)]
    webhook_ms: f64,
    /// Warm dispatch invocation (ms) for --cost-only (at least 50).
    #[arg(long, default_value_t = 50.0)]
    dispatch_ms: f64,
    /// Warm tick invocation (ms) for --cost-only.
    #[arg(long, default_value_t = 8.0)]
    tick_ms: f64,
    /// Only the chat relay benchmark (Verbox ↔ Planfix latency).
    #[arg(long)]
    relay_only: bool,
    /// Chats at once in the relay benchmark.
    #[arg(long, default_value_t = 20)]
    relay_chats: usize,
    /// Messages each way per chat in the relay benchmark.
    #[arg(long, default_value_t = 10)]
    relay_messages: usize,
    /// Markdown report to write.
    #[arg(long, default_value = "bench-report.md")]
    out: PathBuf,
    /// JSON report to write.
    #[arg(long, default_value = "bench-report.json")]
    json: PathBuf,
    /// A line describing the machine (infra/bench.sh passes it).
    #[arg(long, default_value = "")]
    machine: String,
    /// The commit measured.
    #[arg(long, default_value = "")]
    commit: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Binaries are spawned from other working directories.
    args.bin_dir = args.bin_dir.canonicalize()?;
    args.lambda_dir = args.lambda_dir.canonicalize()?;

    if args.load_only {
        let load = load::run(
            &args.bin_dir.join("crmbridge"),
            args.pairs,
            args.concurrency,
            Duration::from_secs(args.seconds),
        )
        .await?;
        println!("{}", serde_json::to_string_pretty(&load)?);
        return Ok(());
    }
    if args.peers_only {
        let peers = peers::run(&args.bin_dir.join("crmbridge"), peers_args(&args)).await?;
        println!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    if args.cost_only {
        let costs = cost::run(
            args.cost_events,
            cost::Durations {
                webhook_ms: args.webhook_ms,
                dispatch_ms: args.dispatch_ms.max(50.0),
                tick_ms: args.tick_ms,
            },
        )
        .await?;
        println!("{}", serde_json::to_string_pretty(&costs)?);
        return Ok(());
    }
    if args.relay_only {
        let relay = relay::run(
            &args.bin_dir.join("crmbridge"),
            args.relay_chats,
            args.relay_messages,
        )
        .await?;
        println!("{}", serde_json::to_string_pretty(&relay)?);
        return Ok(());
    }
    if args.import_only {
        let import = import::run(&args.bin_dir.join("crmbridge"), args.import_contacts).await?;
        println!("{}", serde_json::to_string_pretty(&import)?);
        return Ok(());
    }
    // Only the cold starts need the emulator.
    let endpoint = std::env::var("CRMBRIDGE_TEST_AWS_ENDPOINT").map_err(|_| {
        anyhow::anyhow!("CRMBRIDGE_TEST_AWS_ENDPOINT (moto) is not set: run infra/bench.sh")
    })?;
    eprintln!("==> cold start ({} rounds per function)", args.rounds);
    let key = format!("bench:{}", base64_key());
    // A table of its own per run: a second run on the same emulator would
    // otherwise find the first one's.
    let table = format!("crmbridge-bench-{}", std::process::id());
    let env = vec![
        ("CRMBRIDGE_TABLE".to_owned(), table),
        (
            "CRMBRIDGE_EVENT_BUS".to_owned(),
            "crmbridge-bench".to_owned(),
        ),
        ("CRMBRIDGE_ENCRYPTION_KEYS".to_owned(), key),
        ("AWS_ENDPOINT_URL".to_owned(), endpoint),
        ("AWS_ACCESS_KEY_ID".to_owned(), "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "testing".to_owned()),
        ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
        ("CRMBRIDGE_LOG".to_owned(), "warn".to_owned()),
    ];
    // The functions read and write the table: create it as a deployment would.
    let bootstrap = std::process::Command::new(args.bin_dir.join("crmbridge"))
        .args(["admin", "bootstrap", "--create-table"])
        .envs(env.iter().cloned())
        .output()?;
    anyhow::ensure!(
        bootstrap.status.success(),
        "bootstrap failed: {}",
        String::from_utf8_lossy(&bootstrap.stderr)
    );
    let cold = coldstart::run(&args.lambda_dir, &env, args.rounds).await?;
    if args.cold_only {
        println!("{}", serde_json::to_string_pretty(&cold)?);
        return Ok(());
    }
    let warm = |name: &str| {
        cold.iter()
            .find(|c| c.function == name)
            .map_or(10.0, |c| c.warm_invocation_ms_median)
    };

    eprintln!("==> cost per event ({} events per path)", args.cost_events);
    let costs = cost::run(
        args.cost_events,
        cost::Durations {
            webhook_ms: warm("webhook"),
            dispatch_ms: warm("dispatch").max(50.0),
            tick_ms: warm("tick"),
        },
    )
    .await?;

    eprintln!(
        "==> load: {} pairs, {} concurrent, {} s",
        args.pairs, args.concurrency, args.seconds
    );
    let load = load::run(
        &args.bin_dir.join("crmbridge"),
        args.pairs,
        args.concurrency,
        Duration::from_secs(args.seconds),
    )
    .await?;

    eprintln!(
        "==> peers' workload: {} workers, {} concurrent, {} s",
        args.workers, args.concurrency, args.seconds
    );
    let peers = peers::run(&args.bin_dir.join("crmbridge"), peers_args(&args)).await?;

    eprintln!(
        "==> import: {} HubSpot contacts into KADO",
        args.import_contacts
    );
    let imported = import::run(&args.bin_dir.join("crmbridge"), args.import_contacts).await?;

    let report = json!({
        "machine": args.machine,
        "commit": args.commit,
        "date": chrono::Utc::now().to_rfc3339(),
        "mapping_render_ns_per_event": args.mapping_ns,
        "load": load,
        "peers": peers,
        "import": imported,
        "cold_start": cold,
        "cost": costs,
        "prices": {
            "date": cost::PRICE_DATE,
            "dynamodb_write_unit_per_million": cost::WRITE_UNIT_PER_MILLION,
            "dynamodb_read_unit_per_million": cost::READ_UNIT_PER_MILLION,
            "eventbridge_event_per_million": cost::EVENTBRIDGE_PER_MILLION,
            "lambda_request_per_million": cost::LAMBDA_REQUEST_PER_MILLION,
            "lambda_gb_second": cost::LAMBDA_GB_SECOND,
            "http_api_request_per_million": cost::HTTP_API_PER_MILLION,
        },
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(
        &args.out,
        markdown(&args, &load, &peers, &imported, &cold, &costs),
    )?;
    eprintln!(
        "==> wrote {} and {}",
        args.out.display(),
        args.json.display()
    );
    Ok(())
}

fn peers_args(args: &Args) -> peers::PeersArgs {
    peers::PeersArgs {
        workers: args.workers,
        concurrency: args.concurrency,
        duration: Duration::from_secs(args.seconds),
        rate: args.rate,
    }
}

fn base64_key() -> String {
    use base64::Engine as _;
    use std::io::Read;
    let mut bytes = [0u8; 32];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn markdown(
    args: &Args,
    load: &load::LoadReport,
    peers: &peers::PeersReport,
    imported: &import::ImportReport,
    cold: &[coldstart::ColdStart],
    costs: &[cost::PathCost],
) -> String {
    let mut md = String::new();
    md.push_str("# crmbridge benchmark report\n\n");
    md.push_str(&format!(
        "- machine: {}\n- commit: {}\n- date: {}\n\n",
        args.machine,
        args.commit,
        chrono::Utc::now().to_rfc3339()
    ));
    md.push_str("## Mapping (criterion)\n\n");
    match args.mapping_ns {
        Some(ns) => md.push_str(&format!(
            "Render a 16-field step with 3 filters: **{:.2} µs per event** (one core).\n\n",
            ns / 1000.0
        )),
        None => md.push_str("Not measured in this run.\n\n"),
    }
    md.push_str("## Load: webhook → Calltouch deal + MoySklad counterparty + order (`crmbridge serve`, release, fsync on)\n\n");
    md.push_str(&format!(
        "{} connection pairs, {} concurrent senders, {:.0} s of load.\n\n| metric | value |\n|---|---|\n\
         | accepted webhooks/s | {:.0} |\n| completed automations/s | {:.1} |\n| webhook answer p50 / p99 | {:.2} ms / {:.2} ms |\n\
         | webhook → order created p50 / p99 | {:.0} ms / {:.0} ms |\n| accepted / completed | {} / {} |\n\
         | peak RSS of serve | {:.1} MiB |\n| CPU seconds (serve) / 1,000 events | {:.2} |\n\n",
        load.pairs, load.concurrency, load.duration_s, load.accepted_per_s, load.completed_per_s, load.webhook_p50_ms, load.webhook_p99_ms,
        load.end_to_end_p50_ms, load.end_to_end_p99_ms, load.accepted, load.completed, load.peak_rss_kib as f64 / 1024.0,
        load.cpu_seconds_per_1000_events
    ));
    md.push_str("Completed automations/s is bounded by the vendors' per-connection limits (Calltouch 5 requests/s, MoySklad 45 per 3 s): each connection pair completes at most ~5 a second.\n\n");
    md.push_str("## Load: the peers' workload, webhook → six fields → one `http.request.send` POST (`crmbridge serve`, release, fsync on)\n\n");
    md.push_str(&format!(
        "{} dispatch workers, {} concurrent senders{}, {:.0} s of load.\n\n| metric | value |\n|---|---|\n\
         | accepted webhooks/s | {:.0} |\n| completed automations/s (at the receiver, during the load) | {:.0} |\n\
         | completed automations/s (until the backlog drained) | {:.0} |\n| lost / doubled | {} / {} |\n\
         | webhook answer p50 / p99 | {:.2} ms / {:.2} ms |\n| webhook → receiver p50 / p99 | {:.0} ms / {:.0} ms |\n\
         | CPU ms (serve) per event | {:.3} |\n| CPU ms (this harness: senders and receiver) per event | {:.3} |\n\
         | peak RSS of serve | {:.1} MiB |\n\n",
        peers.workers, peers.concurrency,
        peers.rate_per_s.map(|r| format!(" at {r:.0} webhooks/s")).unwrap_or_default(),
        peers.duration_s, peers.accepted_per_s, peers.completed_during_load_per_s, peers.completed_per_s,
        peers.lost, peers.doubled, peers.webhook_p50_ms, peers.webhook_p99_ms,
        peers.end_to_end_p50_ms, peers.end_to_end_p99_ms, peers.cpu_ms_per_event,
        peers.harness_cpu_ms_per_event, peers.peak_rss_kib as f64 / 1024.0
    ));
    md.push_str("## Import: HubSpot contacts and notes into KADO on activation (`crmbridge serve`, release, fsync on, 8 workers)\n\n");
    md.push_str(&format!(
        "{} contacts and {} notes in HubSpot, {} of the people already in KADO (matched by e-mail).\n\n| metric | value |\n|---|---|\n\
         | every page read | {:.1} s |\n| every record in KADO | {:.1} s |\n| contacts/s | {:.0} |\n| records/s (contacts + notes) | {:.0} |\n\
         | HubSpot calls | {} ({:.3} per contact) |\n| KADO calls | {} ({:.2} per record) |\n| CPU seconds (serve) / 1,000 records | {:.2} |\n\n",
        imported.contacts, imported.notes, imported.already_in_kado, imported.pages_read_s, imported.total_s,
        imported.contacts_per_s, imported.records_per_s, imported.hubspot_calls, imported.hubspot_calls_per_contact,
        imported.kado_calls, imported.kado_calls_per_record, imported.cpu_seconds_per_1000_records
    ));
    md.push_str("## Cold start (Lambda Runtime API emulator, release builds)\n\n| function | init ms | first invocation ms | warm invocation ms | init ÷ hello | binary | zip | peak RSS |\n|---|---|---|---|---|---|---|---|\n");
    for c in cold {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
            c.function,
            c.init_ms_median,
            c.first_invocation_ms_median,
            c.warm_invocation_ms_median,
            c.init_ratio_to_hello,
            c.binary_bytes as f64 / 1048576.0,
            c.zip_bytes as f64 / 1048576.0,
            c.peak_rss_kib as f64 / 1024.0
        ));
    }
    md.push_str("\n## AWS cost per event (us-east-1)\n\n| path | DynamoDB RRU | DynamoDB WRU | store requests | EventBridge entries | Lambda invocations | HTTP API requests | $ per million events |\n|---|---|---|---|---|---|---|---|\n");
    for c in costs {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} | {:.0} | ${:.2} |\n",
            c.path,
            c.read_units_per_event,
            c.write_units_per_event,
            c.store_requests_per_event,
            c.bus_entries_per_event,
            c.lambda_invocations_per_event,
            c.http_requests_per_event,
            c.usd_per_million_events
        ));
    }
    md.push_str(&format!(
        "\nPrices ({}): DynamoDB on-demand ${}/M write units, ${}/M read units; EventBridge ${}/M events; Lambda ${}/M requests + ${}/GB-s (x86); HTTP API ${}/M requests. Request units are counted by the engine's own store calls with DynamoDB's billing rules (1 KB per write unit, 4 KB per strongly consistent read unit, transactions ×2); Lambda duration uses the warm durations measured above (webhook, tick at 128 MB; dispatch at 256 MB, at least 50 ms since real vendor calls dominate).\n",
        cost::PRICE_DATE, cost::WRITE_UNIT_PER_MILLION, cost::READ_UNIT_PER_MILLION, cost::EVENTBRIDGE_PER_MILLION,
        cost::LAMBDA_REQUEST_PER_MILLION, cost::LAMBDA_GB_SECOND, cost::HTTP_API_PER_MILLION
    ));
    md
}
