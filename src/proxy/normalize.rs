//! Pure normalisers that make rule sets comparable:
//!
//! - [`iptables_save`]: live `iptables-save` output → no counters, no `#` lines, tables and
//!   chains in a stable order, rules kept in order within each chain;
//! - [`nft_ruleset`]: live `nft list ruleset` output → no handles, counters or timers, objects
//!   and set elements in a stable order, rules kept in order;
//! - [`sort_iptables_by_service`] and [`sort_nft_transaction`]: the orderings kube-proxy's own
//!   tests apply before comparing (`sortIPTablesRules`, `sortNFTablesTransaction`). They only
//!   reorder services, so they make our output comparable with upstream expectations.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Quote a value as `iptables-save` does (`xtables_save_string`): bare when it only has
/// letters, digits, `-` and `_`; otherwise in double quotes with `"`, `\` and `'` escaped.
pub fn save_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// One table of an iptables dump.
#[derive(Default)]
struct Table {
    /// Chain name → (declaration without counters, rules in order).
    chains: BTreeMap<String, (String, Vec<String>)>,
    /// Chain names in the order they were declared.
    order: Vec<String>,
    /// `-X` lines (restore input only).
    deletes: Vec<String>,
}

/// Split an iptables dump into tables; rules are attached to the chain they append to.
fn parse_iptables(text: &str) -> Vec<(String, Table)> {
    let mut tables: Vec<(String, Table)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim_end();
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            tables.push((name.to_owned(), Table::default()));
            continue;
        }
        let Some((_, table)) = tables.last_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            let name = parts.next().unwrap_or_default().to_owned();
            let policy = parts.next().unwrap_or("-");
            let entry = table.chains.entry(name.clone()).or_default();
            entry.0 = format!(":{name} {policy}");
            if !table.order.contains(&name) {
                table.order.push(name);
            }
            continue;
        }
        // `[packets:bytes] -A …` (iptables-save -c) and `-c packets bytes` (restore form).
        let mut rule = line;
        if rule.starts_with('[')
            && let Some(end) = rule.find(']')
        {
            rule = rule[end + 1..].trim_start();
        }
        let rule = strip_counter_option(rule);
        if let Some(rest) = rule.strip_prefix("-X ") {
            table.deletes.push(format!("-X {}", rest.trim()));
            continue;
        }
        let chain = rule
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let entry = table.chains.entry(chain.clone()).or_default();
        if entry.0.is_empty() {
            entry.0 = format!(":{chain} -");
            table.order.push(chain);
        }
        entry.1.push(rule);
    }
    tables
}

/// Remove `-c P B` / `--set-counters P B` from a rule.
fn strip_counter_option(rule: &str) -> String {
    let words: Vec<&str> = rule.split(' ').collect();
    let mut out: Vec<&str> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if (words[i] == "-c" || words[i] == "--set-counters") && i + 2 < words.len() {
            i += 3;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Normalise `iptables-save` output: drop comments/dates and counters, sort tables by name,
/// put built-in chains first (in hook order) and the others alphabetically, and keep every
/// chain's rules in order.
pub fn iptables_save(text: &str) -> String {
    let mut tables = parse_iptables(text);
    tables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (name, table) in tables {
        out.push('*');
        out.push_str(&name);
        out.push('\n');
        let mut names: Vec<&String> = table.chains.keys().collect();
        names.sort_by_key(|n| {
            (
                BUILTIN_CHAINS
                    .iter()
                    .position(|b| b == n)
                    .unwrap_or(BUILTIN_CHAINS.len()),
                *n,
            )
        });
        for n in &names {
            out.push_str(&table.chains[*n].0);
            out.push('\n');
        }
        for n in &names {
            for rule in &table.chains[*n].1 {
                out.push_str(rule);
                out.push('\n');
            }
        }
        for d in &table.deletes {
            out.push_str(d);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The value of `--comment` in a rule (quotes removed), if any.
fn comment_of(rule: &str) -> Option<&str> {
    let rest = &rule[rule.find("--comment ")? + "--comment ".len()..];
    if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"').map(|end| &quoted[..end])
    } else {
        Some(rest.split(' ').next().unwrap_or(rest))
    }
}

/// The service name in a rule comment: the text up to the first space or colon.
fn comment_service(rule: &str) -> Option<&str> {
    comment_of(rule).map(|c| c.split([' ', ':']).next().unwrap_or(c))
}

fn by_service(a: &str, b: &str) -> Ordering {
    match (comment_service(a), comment_service(b)) {
        (Some(x), Some(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// kube-proxy's `sortIPTablesRules`: tables by name; chains `KUBE-NODEPORTS`, `KUBE-SERVICES`,
/// other `KUBE-*` alphabetically, then the rest; rules grouped by chain in order, except that
/// the rules of `KUBE-NODEPORTS` and `KUBE-SERVICES` are stably sorted by service name (the
/// nat "must be the last rule" rule stays last); `-X` lines come last.
pub fn sort_iptables_by_service(text: &str) -> String {
    let mut tables = parse_iptables(text);
    tables.sort_by(|a, b| a.0.cmp(&b.0));
    let rank = |n: &str| match n {
        "KUBE-NODEPORTS" => 0,
        "KUBE-SERVICES" => 1,
        _ if n.starts_with("KUBE-") => 2,
        _ => 3,
    };
    let mut out = String::new();
    for (name, mut table) in tables {
        out.push('*');
        out.push_str(&name);
        out.push('\n');
        let mut names: Vec<String> = table.order.clone();
        names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
        for chain in ["KUBE-NODEPORTS", "KUBE-SERVICES"] {
            if let Some((_, rules)) = table.chains.get_mut(chain) {
                rules.sort_by(|a, b| {
                    let last = |r: &String| {
                        comment_of(r).is_some_and(|c| c.contains("must be the last rule"))
                    };
                    match (last(a), last(b)) {
                        (true, false) => Ordering::Greater,
                        (false, true) => Ordering::Less,
                        _ => by_service(a, b),
                    }
                });
            }
        }
        for n in &names {
            out.push_str(&table.chains[n].0);
            out.push_str(" [0:0]\n");
        }
        for n in &names {
            for rule in &table.chains[n].1 {
                out.push_str(rule);
                out.push('\n');
            }
        }
        table.deletes.sort();
        for d in &table.deletes {
            out.push_str(d);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// kube-proxy's `sortNFTablesTransaction`: drop blank and `#` lines, then sort by object type
/// (table, chain, rule, set, map, element), then object name; rules keep their order.
pub fn sort_nft_transaction(text: &str) -> String {
    let order = |kind: &str| match kind {
        "table" => 0,
        "chain" => 1,
        "rule" => 2,
        "set" => 3,
        "map" => 4,
        "element" => 5,
        _ => 6,
    };
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    lines.sort_by(|a, b| {
        let wa: Vec<&str> = a.split(' ').collect();
        let wb: Vec<&str> = b.split(' ').collect();
        if wa.len() < 5 || wb.len() < 5 {
            return Ordering::Equal;
        }
        order(wa[1])
            .cmp(&order(wb[1]))
            .then_with(|| wa[4].cmp(wb[4]))
            .then_with(|| {
                if wa[1] == "rule" {
                    Ordering::Equal
                } else {
                    a.cmp(b)
                }
            })
    });
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// A block of `nft list ruleset` output: a header line and its body.
#[derive(Debug)]
struct Block {
    header: String,
    lines: Vec<String>,
    children: Vec<Block>,
}

/// Strip what changes between listings of the same ruleset: `# handle N` annotations,
/// counter values and the `expires` timers of dynamic set elements.
fn clean_nft_line(line: &str) -> String {
    let mut line = line.trim().to_owned();
    if let Some(pos) = line.find(" # handle ") {
        line.truncate(pos);
    }
    let words: Vec<&str> = line.split(' ').collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let skip = match words[i] {
            "counter" if words.get(i + 1) == Some(&"packets") => {
                out.push("counter".to_owned());
                5 // counter packets N bytes M
            }
            "expires" => 2,
            _ => 0,
        };
        if skip == 0 {
            out.push(words[i].to_owned());
            i += 1;
            continue;
        }
        // Keep list punctuation that was glued to the dropped value (`… expires 2h,`).
        let last = words.get(i + skip - 1).copied().unwrap_or("");
        let glued: String = last
            .chars()
            .rev()
            .take_while(|c| matches!(c, ',' | '}'))
            .collect();
        if let Some(prev) = out.last_mut() {
            prev.extend(glued.chars().rev());
        }
        i += skip;
    }
    out.join(" ")
}

/// Split the elements of an `elements = { … }` list at top-level commas (not inside quotes or
/// nested braces).
fn split_elements(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut quoted = false;
    let mut current = String::new();
    for c in body.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(clean_nft_line(&current));
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        out.push(clean_nft_line(&current));
    }
    out.retain(|e| !e.is_empty());
    out
}

fn parse_nft_blocks(
    lines: &mut std::iter::Peekable<std::vec::IntoIter<String>>,
) -> (Vec<String>, Vec<Block>) {
    let mut own = Vec::new();
    let mut children = Vec::new();
    while let Some(line) = lines.next() {
        if line == "}" {
            break;
        }
        if let Some(first) = line.strip_prefix("elements = {") {
            // Gather the whole element list, which may span lines.
            let mut text = first.to_owned();
            while !text.trim_end().ends_with('}') {
                match lines.next() {
                    Some(next) => {
                        text.push(' ');
                        text.push_str(&next);
                    }
                    None => break,
                }
            }
            let body = text.trim_end().trim_end_matches('}');
            let mut elements = split_elements(body);
            elements.sort();
            own.push("elements = {".to_owned());
            own.extend(elements.into_iter().map(|e| format!("\t{e},")));
            own.push("}".to_owned());
            continue;
        }
        if let Some(header) = line.strip_suffix(" {") {
            let (body, nested) = parse_nft_blocks(lines);
            children.push(Block {
                header: header.to_owned(),
                lines: body,
                children: nested,
            });
            continue;
        }
        own.push(line);
    }
    (own, children)
}

fn write_block(out: &mut String, block: &Block, indent: usize) {
    let pad = "\t".repeat(indent);
    out.push_str(&format!("{pad}{} {{\n", block.header));
    for line in &block.lines {
        out.push_str(&format!("{pad}\t{line}\n"));
    }
    for child in &block.children {
        write_block(out, child, indent + 1);
    }
    out.push_str(&format!("{pad}}}\n"));
}

fn sort_blocks(blocks: &mut [Block]) {
    let kind_rank = |h: &str| match h.split(' ').next().unwrap_or("") {
        "set" => 0,
        "map" => 1,
        "chain" => 2,
        _ => 3,
    };
    blocks.sort_by(|a, b| {
        kind_rank(&a.header)
            .cmp(&kind_rank(&b.header))
            .then_with(|| a.header.cmp(&b.header))
    });
    for b in blocks.iter_mut() {
        sort_blocks(&mut b.children);
    }
}

/// Normalise `nft list ruleset` output: tables sorted by family and name; inside a table sets,
/// maps and chains each sorted by name; rules in order without handles or counter values;
/// set elements sorted one per line without timers.
pub fn nft_ruleset(text: &str) -> String {
    let cleaned: Vec<String> = text
        .lines()
        .map(clean_nft_line)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut iter = cleaned.into_iter().peekable();
    let (_, mut blocks) = parse_nft_blocks(&mut iter);
    sort_blocks(&mut blocks);
    let mut out = String::new();
    for block in &blocks {
        write_block(&mut out, block, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE_SAVE: &str =
        include_str!("../../tests/fixtures/proxy/live/live-iptables-save-c.txt");
    const LIVE_NFT: &str = include_str!("../../tests/fixtures/proxy/live/live-nft-ruleset-a.txt");

    #[test]
    fn iptables_save_drops_counters_and_dates_and_orders_chains() {
        let out = iptables_save(LIVE_SAVE);
        assert!(
            !out.contains('#') && !out.contains("[0:0]") && !out.contains(" -c "),
            "{out}"
        );
        assert!(
            out.starts_with("*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\n"),
            "{out}"
        );
        assert_eq!(
            iptables_save(&out),
            out,
            "normalising twice changes nothing"
        );
        // Reversing the order of the tables in the input changes nothing.
        let tables: Vec<&str> = LIVE_SAVE.split_inclusive("COMMIT\n").collect();
        let reversed: String = tables.iter().rev().copied().collect();
        assert_eq!(iptables_save(&reversed), out);
        // Rules keep their order inside a chain (the prepended portal hook stays first).
        let prerouting: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("-A PREROUTING"))
            .collect();
        assert!(
            prerouting[0].ends_with("-j KUBE-PORTALS-CONTAINER"),
            "{prerouting:?}"
        );
        assert!(
            prerouting[1].ends_with("-j KUBE-SERVICES"),
            "{prerouting:?}"
        );
        crate::testing::snapshot_settings()
            .bind(|| insta::assert_snapshot!("live_iptables_save", out));
    }

    #[test]
    fn restore_counters_are_stripped_too() {
        let text = "*nat\n:KUBE-X - [5:6]\n-A KUBE-X -c 10 20 -j RETURN\nCOMMIT\n";
        assert_eq!(
            iptables_save(text),
            "*nat\n:KUBE-X -\n-A KUBE-X -j RETURN\nCOMMIT\n"
        );
    }

    #[test]
    fn nft_ruleset_drops_handles_counters_and_timers() {
        let out = nft_ruleset(LIVE_NFT);
        for noise in ["handle", "counter packets", "expires", "# Warning"] {
            assert!(!out.contains(noise), "{noise} left in:\n{out}");
        }
        assert!(
            out.contains("\t\telements = {\n\t\t\t10.9.9.1,\n\t\t\t10.9.9.9,\n\t\t}\n"),
            "{out}"
        );
        assert!(out.contains("ip daddr 1.2.3.4 counter accept"), "{out}");
        assert_eq!(nft_ruleset(&out), out, "normalising twice changes nothing");
        crate::testing::snapshot_settings()
            .bind(|| insta::assert_snapshot!("live_nft_ruleset", out));
    }

    #[test]
    fn nft_elements_are_sorted_whatever_the_listing_order() {
        let a = "table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.2, 10.0.0.1 }\n\t}\n}\n";
        let b = "table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1,\n\t\t\t     10.0.0.2 }\n\t}\n}\n";
        assert_eq!(nft_ruleset(a), nft_ruleset(b));
    }

    #[test]
    fn sort_by_service_matches_upstream_example() {
        // TestSortIPTablesRules, "correctly match same service name in different styles of comments".
        let input = "*filter\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n\
-A KUBE-SERVICES -m comment --comment \"ns2/svc2:p80 cluster IP\" svc2 line 1\n\
-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2\n\
-A KUBE-SERVICES -m comment --comment \"ns2/svc2 blah\" svc2 line 3\n\
-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" svc1 line 1\n\
-A KUBE-SERVICES -m comment --comment ns1/svc1 svc1 line 2\n\
-A KUBE-SERVICES -m comment --comment \"ns1/svc1 blah\" svc1 line 3\n\
COMMIT\n";
        let want = "*filter\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n\
-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" svc1 line 1\n\
-A KUBE-SERVICES -m comment --comment ns1/svc1 svc1 line 2\n\
-A KUBE-SERVICES -m comment --comment \"ns1/svc1 blah\" svc1 line 3\n\
-A KUBE-SERVICES -m comment --comment \"ns2/svc2:p80 cluster IP\" svc2 line 1\n\
-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2\n\
-A KUBE-SERVICES -m comment --comment \"ns2/svc2 blah\" svc2 line 3\n\
COMMIT\n";
        assert_eq!(sort_iptables_by_service(input), want);
    }

    #[test]
    fn nft_transaction_sort_keeps_rule_order() {
        let tx = "add rule ip kube-proxy b x\nadd chain ip kube-proxy b\n# c\n\nadd rule ip kube-proxy a y\nadd rule ip kube-proxy b w\n";
        assert_eq!(
            sort_nft_transaction(tx),
            "add chain ip kube-proxy b\nadd rule ip kube-proxy a y\nadd rule ip kube-proxy b x\nadd rule ip kube-proxy b w\n"
        );
    }

    #[test]
    fn quoting_follows_iptables_save() {
        assert_eq!(save_quote("KUBE-SVC"), "KUBE-SVC");
        assert_eq!(save_quote("default/nginx:"), "\"default/nginx:\"");
        assert_eq!(save_quote("a \"b\""), "\"a \\\"b\\\"\"");
    }
}
