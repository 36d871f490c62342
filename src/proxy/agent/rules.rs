//! Pure helpers over `iptables-save` dumps and restore inputs, for the agent's kernel layer:
//! which chains belong to a proxy mode, the single `iptables-restore --noflush` input that
//! removes all of a mode's rules and chains, the jump rules missing from the built-in chains,
//! and the nat chains a restore leaves behind (for kube-proxy's stale-chain cleanup).

use crate::proxy::userspace::{NODEPORT_CONTAINER, NODEPORT_HOST, PORTALS_CONTAINER, PORTALS_HOST};
use crate::proxy::{JumpRule, Position, ProxyMode, jump_rules};

// The diffs hash every line of two rule sets of thousands of rules on every sync; SipHash's
// resistance to crafted keys buys nothing for our own rendered text, foldhash is much faster.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

/// Fixed chains of kube-proxy's iptables mode, per table (`KUBE-FIREWALL` and
/// `KUBE-MARK-DROP` are kubelet's in a real cluster; here nothing else makes them).
const IPTABLES_FILTER: [&str; 7] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
    "KUBE-FIREWALL",
    "KUBE-PROXY-CANARY",
];
const IPTABLES_NAT: [&str; 6] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-MARK-DROP",
    "KUBE-PROXY-CANARY",
];
/// Per-service chains of the iptables mode (nat).
const IPTABLES_NAT_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-EXT-",
];
const USERSPACE_NAT: [&str; 4] = [
    PORTALS_CONTAINER,
    PORTALS_HOST,
    NODEPORT_CONTAINER,
    NODEPORT_HOST,
];

/// Whether `chain` of `table` is one that `mode` creates. nftables mode owns no iptables chain
/// (it owns the nftables table `kube-proxy`).
pub fn owns_chain(mode: ProxyMode, table: &str, chain: &str) -> bool {
    match (mode, table) {
        (ProxyMode::Userspace, "nat") => USERSPACE_NAT.contains(&chain),
        (ProxyMode::Iptables, "filter") => IPTABLES_FILTER.contains(&chain),
        (ProxyMode::Iptables, "nat") => {
            IPTABLES_NAT.contains(&chain)
                || IPTABLES_NAT_PREFIXES.iter().any(|p| chain.starts_with(p))
        }
        _ => false,
    }
}

/// One table of a dump: its chains in declaration order and its rules (`-A …` lines) in order.
#[derive(Debug, Default)]
struct SavedTable {
    name: String,
    chains: Vec<String>,
    rules: Vec<String>,
}

fn parse_save(save: &str) -> Vec<SavedTable> {
    let mut tables: Vec<SavedTable> = Vec::new();
    for line in save.lines().map(str::trim_end) {
        if let Some(name) = line.strip_prefix('*') {
            tables.push(SavedTable {
                name: name.to_owned(),
                ..SavedTable::default()
            });
        } else if let Some(table) = tables.last_mut() {
            // `[packets:bytes] -A …` when saved with counters.
            let line = match line.strip_prefix('[') {
                Some(rest) => rest.split_once("] ").map_or(line, |(_, rule)| rule),
                None => line,
            };
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    table.chains.push(name.to_owned());
                }
            } else if line.starts_with("-A ") {
                table.rules.push(line.to_owned());
            }
        }
    }
    tables
}

/// The chain a saved rule is in and its target (`-j X`), if any.
fn chain_and_target(rule: &str) -> (&str, Option<&str>) {
    let mut words = rule.split_whitespace();
    words.next(); // -A
    let chain = words.next().unwrap_or_default();
    let mut target = None;
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            target = words.next();
        }
    }
    (chain, target)
}

/// The chains of `table` in a dump (e.g. the nat chains kube-proxy's stale cleanup looks at).
pub fn saved_chains(save: &str, table: &str) -> Vec<String> {
    parse_save(save)
        .into_iter()
        .filter(|t| t.name == table)
        .flat_map(|t| t.chains)
        .collect()
}

/// The restore input that removes every rule and chain of `mode` from the tables in `save`:
/// rules elsewhere that jump to the mode's chains are deleted (`-D`), the chains flushed (a
/// chain line flushes under `--noflush`) and deleted (`-X`). `None` when nothing is left.
pub fn cleanup_restore(mode: ProxyMode, save: &str) -> Option<String> {
    let mut out = String::new();
    for table in parse_save(save) {
        let owned: Vec<&String> = table
            .chains
            .iter()
            .filter(|c| owns_chain(mode, &table.name, c))
            .collect();
        if owned.is_empty() {
            continue;
        }
        out.push_str(&format!("*{}\n", table.name));
        for chain in &owned {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for rule in &table.rules {
            let (chain, target) = chain_and_target(rule);
            let jumps_to_owned = target.is_some_and(|t| owns_chain(mode, &table.name, t));
            if jumps_to_owned && !owns_chain(mode, &table.name, chain) {
                out.push_str("-D ");
                out.push_str(&rule[3..]);
                out.push('\n');
            }
        }
        for chain in &owned {
            out.push_str(&format!("-X {chain}\n"));
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

/// The jump rules of `mode` that `save` does not show, in the order they must be ensured.
pub fn missing_jumps(mode: ProxyMode, save: &str) -> Vec<JumpRule> {
    let tables = parse_save(save);
    jump_rules(mode)
        .into_iter()
        .filter(|jump| {
            let line = jump.save_line();
            !tables
                .iter()
                .any(|t| t.name == jump.table && t.rules.contains(&line))
        })
        .collect()
}

/// A jump rule as a restore command: `-I CHAIN 1 …` (prepend) or `-A CHAIN …` (append).
fn jump_command(jump: &JumpRule) -> String {
    let line = jump.save_line();
    match jump.position {
        Position::Append => line,
        Position::Prepend => {
            let rest = &line[3 + jump.chain.len()..];
            format!("-I {} 1{rest}", jump.chain)
        }
    }
}

/// Add `jumps` to a restore input: each one at the end of its table's section (after the
/// chain declarations, so its target exists), or in a section of its own.
pub fn with_jumps(restore: &str, jumps: &[JumpRule]) -> String {
    if jumps.is_empty() {
        return restore.to_owned();
    }
    let mut out = String::with_capacity(restore.len() + jumps.len() * 128);
    let mut table = String::new();
    let mut done: Vec<&str> = Vec::new();
    for line in restore.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_owned();
        }
        if line == "COMMIT" {
            for jump in jumps.iter().filter(|j| j.table == table) {
                out.push_str(&jump_command(jump));
                out.push('\n');
            }
            if let Some(j) = jumps.iter().find(|j| j.table == table) {
                done.push(j.table);
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    let mut rest: Vec<&str> = Vec::new();
    for jump in jumps {
        if !done.contains(&jump.table) && !rest.contains(&jump.table) {
            rest.push(jump.table);
        }
    }
    for name in rest {
        out.push_str(&format!("*{name}\n"));
        for jump in jumps.iter().filter(|j| j.table == name) {
            out.push_str(&jump_command(jump));
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The chains of `table` that exist after applying `restore`: declared ones minus `-X` ones.
pub fn chains_after_restore(restore: &str, table: &str) -> Vec<String> {
    let mut current = String::new();
    let mut declared: Vec<String> = Vec::new();
    let mut deleted: Vec<&str> = Vec::new();
    for line in restore.lines() {
        if let Some(name) = line.strip_prefix('*') {
            current = name.to_owned();
        } else if current == table {
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    declared.push(name.to_owned());
                }
            } else if let Some(name) = line.strip_prefix("-X ") {
                deleted.push(name.trim());
            }
        }
    }
    declared.retain(|c| !deleted.contains(&c.as_str()));
    declared
}

/// The chains of `table` after a partial restore `restore` (which declares only the
/// chains it rewrites or deletes) was applied on top of `before`.
pub fn chains_after_partial(before: &[String], restore: &str, table: &str) -> Vec<String> {
    let declared = chains_after_restore(restore, table);
    let deleted: Vec<&str> = restore
        .lines()
        .filter_map(|l| l.strip_prefix("-X "))
        .map(str::trim)
        .collect();
    let mut out: Vec<String> = before
        .iter()
        .filter(|c| !deleted.contains(&c.as_str()))
        .cloned()
        .collect();
    for chain in declared {
        if !out.contains(&chain) {
            out.push(chain);
        }
    }
    out
}

/// The `-A` rules of a restore input per table: (filter, nat).
pub fn rule_counts(restore: &str) -> (usize, usize) {
    let mut table = "";
    let (mut filter, mut nat) = (0, 0);
    for line in restore.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name;
        } else if line.starts_with("-A ") {
            match table {
                "filter" => filter += 1,
                "nat" => nat += 1,
                _ => {}
            }
        }
    }
    (filter, nat)
}

/// One table of a restore input: chain declarations and rules in order, `-X` lines.
#[derive(Default)]
struct RestoreTable<'a> {
    declarations: Vec<(&'a str, &'a str)>,
    rules: Vec<(&'a str, &'a str)>,
    deletes: Vec<&'a str>,
}

fn parse_restore(text: &str) -> Vec<(&str, RestoreTable<'_>)> {
    let mut tables: Vec<(&str, RestoreTable)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            tables.push((name, RestoreTable::default()));
            continue;
        }
        let Some((_, table)) = tables.last_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or("");
            table.declarations.push((chain, line));
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or("");
            table.rules.push((chain, line));
        } else if line.starts_with("-X ") {
            table.deletes.push(line);
        }
    }
    tables
}

/// A restore input that takes the kernel from `previous` (the last input applied in full or
/// in part) to `next`: with `--noflush`, chains it does not mention keep their rules, so only
/// chains that are new, changed or to be deleted are written. This is kube-proxy's partial
/// sync; with a thousand services and one change, the kernel gets a few chains instead of
/// thousands. A long chain with a few changed rules (`KUBE-SERVICES` after one service
/// changed) is edited in place ([`rule_edits`]); other changed chains are declared, which
/// flushes them, and written whole.
pub fn partial_restore(previous: &str, next: &str) -> String {
    // Rules grouped by (table, chain), so that comparing a chain is one lookup.
    fn by_chain<'a>(
        tables: &[(&'a str, RestoreTable<'a>)],
    ) -> HashMap<(&'a str, &'a str), Vec<&'a str>> {
        let mut map: HashMap<(&str, &str), Vec<&str>> = HashMap::default();
        for (name, table) in tables {
            for (chain, line) in &table.rules {
                map.entry((*name, *chain)).or_default().push(*line);
            }
        }
        map
    }
    let before = parse_restore(previous);
    let after = parse_restore(next);
    let (old_rules, new_rules) = (by_chain(&before), by_chain(&after));
    let old_chains: HashSet<(&str, &str)> = before
        .iter()
        .flat_map(|(name, t)| t.declarations.iter().map(move |(c, _)| (*name, *c)))
        .collect();
    let empty = Vec::new();
    let mut out = String::new();
    for (name, table) in &after {
        let deleted: HashSet<&str> = table
            .deletes
            .iter()
            .map(|l| l.trim_start_matches("-X ").trim())
            .collect();
        let changed: HashSet<&str> = table
            .declarations
            .iter()
            .map(|(chain, _)| *chain)
            .filter(|chain| {
                let key = (*name, *chain);
                deleted.contains(chain)
                    || !old_chains.contains(&key)
                    || old_rules.get(&key).unwrap_or(&empty)
                        != new_rules.get(&key).unwrap_or(&empty)
            })
            .collect();
        if changed.is_empty() && table.deletes.is_empty() {
            continue;
        }
        // Chains kept in the kernel and edited rule by rule instead of rewritten.
        let edits: HashMap<&str, Vec<String>> = changed
            .iter()
            .filter(|chain| old_chains.contains(&(*name, **chain)) && !deleted.contains(*chain))
            .filter_map(|chain| {
                let key = (*name, *chain);
                let (old, new) = (
                    old_rules.get(&key).unwrap_or(&empty),
                    new_rules.get(&key).unwrap_or(&empty),
                );
                Some((*chain, rule_edits(chain, old, new)?))
            })
            .collect();
        out.push_str(&format!("*{name}\n"));
        for (chain, line) in &table.declarations {
            if changed.contains(chain) && !edits.contains_key(chain) {
                out.push_str(line);
                out.push('\n');
            }
        }
        for (chain, line) in &table.rules {
            if changed.contains(chain) && !edits.contains_key(chain) {
                out.push_str(line);
                out.push('\n');
            }
        }
        // After the declarations, so that a new rule's jump target exists.
        for (chain, _) in &table.declarations {
            for line in edits.get(chain).into_iter().flatten() {
                out.push_str(line);
                out.push('\n');
            }
        }
        for line in &table.deletes {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Chains shorter than this are rewritten whole: editing rules by number makes iptables-nft
/// read the chain's rules from the kernel first, which only pays off for long chains.
const EDIT_MIN_RULES: usize = 16;

/// The restore commands that turn `chain`'s rules `old` (as in the kernel) into `new` in
/// place: `-R` for a replaced rule, `-D` and `-I` by rule number (`-A` at the end), in the
/// order of a diff of the two lists, so that every number is valid when its command runs.
/// `None` when rewriting the chain is cheaper: a short chain, or more than a quarter of it
/// changed. Writing only the changed rules is what makes one change cheap in a chain of a
/// thousand (with the nf_tables backend, a chain rewrite costs about 35 µs per rule).
pub fn rule_edits(chain: &str, old: &[&str], new: &[&str]) -> Option<Vec<String>> {
    if old.len() < EDIT_MIN_RULES {
        return None;
    }
    let ops = similar::capture_diff_slices(similar::Algorithm::Myers, old, new);
    let changed: usize = ops
        .iter()
        .map(|op| match *op {
            similar::DiffOp::Equal { .. } => 0,
            similar::DiffOp::Delete { old_len, .. } => old_len,
            similar::DiffOp::Insert { new_len, .. } => new_len,
            similar::DiffOp::Replace {
                old_len, new_len, ..
            } => old_len.max(new_len),
        })
        .sum();
    if changed * 4 > old.len() {
        return None;
    }
    // The arguments of a rendered rule: what follows `-A CHAIN `.
    let args = |rule: &str| rule.split_at(3 + chain.len() + 1).1.to_owned();
    let mut out = Vec::new();
    // Rules in the kernel's chain as the commands so far leave it. An op's rules start at
    // its `new_index`: everything before it already reads as `new`.
    let mut len = old.len();
    for op in ops {
        let (old_len, new_index, new_len) = match op {
            similar::DiffOp::Equal { .. } => continue,
            similar::DiffOp::Delete {
                old_len, new_index, ..
            } => (old_len, new_index, 0),
            similar::DiffOp::Insert {
                new_index, new_len, ..
            } => (0, new_index, new_len),
            similar::DiffOp::Replace {
                old_len,
                new_index,
                new_len,
                ..
            } => (old_len, new_index, new_len),
        };
        let replaced = old_len.min(new_len);
        for (at, rule) in new.iter().enumerate().skip(new_index).take(replaced) {
            out.push(format!("-R {chain} {} {}", at + 1, args(rule)));
        }
        for _ in replaced..old_len {
            out.push(format!("-D {chain} {}", new_index + replaced + 1));
            len -= 1;
        }
        for (at, rule) in new
            .iter()
            .enumerate()
            .take(new_index + new_len)
            .skip(new_index + replaced)
        {
            out.push(if at == len {
                format!("-A {chain} {}", args(rule))
            } else {
                format!("-I {chain} {} {}", at + 1, args(rule))
            });
            len += 1;
        }
    }
    Some(out)
}

/// What an iptables-mode sync writes: on a full sync (`save` read from the kernel) the whole
/// rendered `text` plus the jump rules the kernel lacks; otherwise only what differs from
/// the last applied input; the whole text when nothing was applied yet.
pub fn iptables_sync_input(
    mode: ProxyMode,
    text: &str,
    save: Option<&str>,
    previous: Option<&str>,
) -> String {
    match (save, previous) {
        (Some(save), _) => with_jumps(text, &missing_jumps(mode, save)),
        (None, Some(previous)) => partial_restore(previous, text),
        (None, None) => text.to_owned(),
    }
}

/// What an nftables sync writes: a patch from the last applied script when there is one and
/// the sync is not a full one, else the whole `script` (which rebuilds the table).
pub fn nft_sync_input(script: &str, previous: Option<&str>, full: bool) -> String {
    match previous {
        Some(previous) if !full => {
            partial_nft(previous, script).unwrap_or_else(|| script.to_owned())
        }
        _ => script.to_owned(),
    }
}

/// The objects of a rendered nft script (a flat list of `add` commands for one table).
#[derive(Default)]
struct NftScript<'a> {
    /// The table's `add table ... { ... }` line.
    table: Option<&'a str>,
    /// Chains, sets and maps: (kind, name) → declaration line, in order.
    objects: Vec<((&'a str, &'a str), &'a str)>,
    /// Chain → its rules (everything after the chain name), in order.
    rules: HashMap<&'a str, Vec<&'a str>>,
    /// Set or map → its elements (the text between the braces).
    elements: HashMap<&'a str, Vec<&'a str>>,
    /// The `family table` prefix of every command, e.g. `ip kube-proxy`.
    prefix: &'a str,
}

fn parse_nft(text: &str) -> Option<NftScript<'_>> {
    let mut script = NftScript::default();
    for line in text.lines() {
        let mut words = line.splitn(5, ' ');
        let (verb, what) = (words.next()?, words.next()?);
        let (family, table) = (words.next()?, words.next()?);
        let rest = words.next().unwrap_or("");
        let prefix = &line[verb.len() + what.len() + 2
            ..verb.len() + what.len() + 2 + family.len() + table.len() + 1];
        match (verb, what) {
            ("add", "table") => {
                script.table = Some(line);
                script.prefix = prefix;
            }
            ("delete", "table") => {}
            ("add", "chain" | "set" | "map") => {
                let name = rest.split(' ').next()?;
                script.objects.push(((what, name), line));
            }
            ("add", "rule") => {
                let (chain, rule) = rest.split_once(' ')?;
                script.rules.entry(chain).or_default().push(rule);
            }
            ("add", "element") => {
                let (set, element) = rest.split_once(' ')?;
                let element = element.strip_prefix("{ ")?.strip_suffix(" }")?;
                script.elements.entry(set).or_default().push(element);
            }
            // Anything else: no partial sync for it.
            _ => return None,
        }
    }
    Some(script)
}

/// An nft transaction that takes the kube-proxy table from `previous` (the last script
/// applied) to `next`, touching only what changed: new chains, sets and maps; changed chains
/// flushed and refilled; elements added and deleted; chains, sets and maps that are gone,
/// deleted last (after nothing refers to them). `None` when the two cannot be diffed (another
/// table, a declaration that changed): then the whole script is applied.
pub fn partial_nft(previous: &str, next: &str) -> Option<String> {
    let (old, new) = (parse_nft(previous)?, parse_nft(next)?);
    if old.table != new.table || old.prefix != new.prefix {
        return None;
    }
    let p = new.prefix;
    let mut out = String::new();
    let old_decls: HashMap<(&str, &str), &str> = old.objects.iter().copied().collect();
    let new_keys: HashSet<(&str, &str)> = new.objects.iter().map(|(k, _)| *k).collect();
    for (key, line) in &new.objects {
        match old_decls.get(key) {
            None => {
                out.push_str(line);
                out.push('\n');
            }
            Some(before) if before != line => return None,
            Some(_) => {}
        }
    }
    let empty = Vec::new();
    for ((kind, name), _) in &new.objects {
        if *kind != "chain" {
            continue;
        }
        let (before, after) = (
            old.rules.get(name).unwrap_or(&empty),
            new.rules.get(name).unwrap_or(&empty),
        );
        let existed = old_decls.contains_key(&(*kind, *name));
        if existed && before == after {
            continue;
        }
        if existed {
            out.push_str(&format!("flush chain {p} {name}\n"));
        }
        for rule in after {
            out.push_str(&format!("add rule {p} {name} {rule}\n"));
        }
    }
    // Elements: deletions first (by key), so that a key whose value changed can be re-added.
    let key_of = |e: &str| e.split_once(" : ").map_or(e, |(k, _)| k).to_string();
    // Sets and maps in declaration order, so that the patch is the same on every run.
    let sets = || {
        new.objects
            .iter()
            .filter(|((kind, _), _)| *kind != "chain")
            .map(|((_, name), _)| *name)
    };
    for set in sets() {
        let Some(before) = old.elements.get(set) else {
            continue;
        };
        let after: HashSet<&str> = new
            .elements
            .get(set)
            .unwrap_or(&empty)
            .iter()
            .copied()
            .collect();
        for e in before.iter().filter(|e| !after.contains(*e)) {
            out.push_str(&format!("delete element {p} {set} {{ {} }}\n", key_of(e)));
        }
    }
    for set in sets() {
        let Some(after) = new.elements.get(set) else {
            continue;
        };
        let before: HashSet<&str> = old
            .elements
            .get(set)
            .unwrap_or(&empty)
            .iter()
            .copied()
            .collect();
        for e in after.iter().filter(|e| !before.contains(*e)) {
            out.push_str(&format!("add element {p} {set} {{ {e} }}\n"));
        }
    }
    let gone: Vec<&(&str, &str)> = old
        .objects
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !new_keys.contains(*k))
        .collect();
    for (_, name) in gone.iter().filter(|(kind, _)| *kind == "chain") {
        out.push_str(&format!("flush chain {p} {name}\n"));
    }
    for (kind, name) in &gone {
        out.push_str(&format!("delete {kind} {p} {name}\n"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A save taken from a namespace where both iptables-based modes left rules behind, next
    /// to flannel's and a user's own.
    const SAVE: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
:MINE - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -j MINE
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORT-CONTAINER - [0:0]
:KUBE-PORTALS-CONTAINER - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-ABC - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XYZ - [0:0]
-A PREROUTING -m comment --comment "handle ClusterIPs; NOTE: this must be before the NodePort rules" -j KUBE-PORTALS-CONTAINER
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment "handle service NodePorts; NOTE: this must be the last rule in the chain" -j KUBE-NODEPORT-CONTAINER
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A KUBE-SERVICES -d 192.168.3.91/32 -p tcp -m comment --comment "default/nginx cluster IP" -m tcp --dport 8001 -j KUBE-SVC-XYZ
-A KUBE-SVC-XYZ -j KUBE-SEP-ABC
-A KUBE-SEP-ABC -p tcp -m tcp -j DNAT --to-destination 172.16.1.2:80
COMMIT
"#;

    #[test]
    fn cleanup_removes_exactly_the_iptables_mode() {
        let script = cleanup_restore(ProxyMode::Iptables, SAVE).unwrap();
        crate::testing::snapshot_settings()
            .bind(|| insta::assert_snapshot!("cleanup_iptables_mode", script));
        assert!(!script.contains("MINE") && !script.contains("FLANNEL"));
        assert!(!script.contains("PORTALS"), "the userspace chains stay");
    }

    #[test]
    fn cleanup_removes_exactly_the_userspace_mode() {
        let script = cleanup_restore(ProxyMode::Userspace, SAVE).unwrap();
        assert_eq!(
            script,
            "*nat\n:KUBE-NODEPORT-CONTAINER - [0:0]\n:KUBE-PORTALS-CONTAINER - [0:0]\n\
             -D PREROUTING -m comment --comment \"handle ClusterIPs; NOTE: this must be before the NodePort rules\" -j KUBE-PORTALS-CONTAINER\n\
             -D PREROUTING -m addrtype --dst-type LOCAL -m comment --comment \"handle service NodePorts; NOTE: this must be the last rule in the chain\" -j KUBE-NODEPORT-CONTAINER\n\
             -X KUBE-NODEPORT-CONTAINER\n-X KUBE-PORTALS-CONTAINER\nCOMMIT\n"
        );
        assert_eq!(cleanup_restore(ProxyMode::Nftables, SAVE), None);
        assert_eq!(
            cleanup_restore(
                ProxyMode::Userspace,
                "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"
            ),
            None
        );
    }

    #[test]
    fn missing_jumps_skips_present_ones_and_keeps_order() {
        let missing: Vec<String> = missing_jumps(ProxyMode::Userspace, SAVE)
            .iter()
            .map(|j| j.save_line())
            .collect();
        assert_eq!(missing.len(), 2, "{missing:#?}");
        assert!(missing[0].starts_with("-A OUTPUT") && missing[0].ends_with("KUBE-PORTALS-HOST"));
        assert!(missing[1].starts_with("-A OUTPUT") && missing[1].ends_with("KUBE-NODEPORT-HOST"));
        let all = jump_rules(ProxyMode::Iptables).len();
        let present_in_save = 5;
        assert_eq!(
            missing_jumps(ProxyMode::Iptables, SAVE).len(),
            all - present_in_save
        );
    }

    #[test]
    fn jumps_go_to_the_end_of_their_table() {
        let restore = "*nat\n:KUBE-PORTALS-CONTAINER - [0:0]\n:KUBE-PORTALS-HOST - [0:0]\n:KUBE-NODEPORT-CONTAINER - [0:0]\n:KUBE-NODEPORT-HOST - [0:0]\nCOMMIT\n";
        let out = with_jumps(restore, &jump_rules(ProxyMode::Userspace));
        crate::testing::snapshot_settings()
            .bind(|| insta::assert_snapshot!("userspace_restore_with_jumps", out));
        assert_eq!(with_jumps(restore, &[]), restore);
        // A table the input does not have gets its own section.
        let filter_only = with_jumps("*nat\nCOMMIT\n", &jump_rules(ProxyMode::Iptables)[..1]);
        assert!(filter_only.ends_with("*filter\n-I INPUT 1 -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\nCOMMIT\n"), "{filter_only}");
    }

    #[test]
    fn chains_after_restore_drop_deleted_ones() {
        let restore = "*filter\n:KUBE-SERVICES - [0:0]\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SVC-OLD - [0:0]\n-X KUBE-SVC-OLD\nCOMMIT\n";
        assert_eq!(
            chains_after_restore(restore, "nat"),
            vec!["KUBE-SERVICES", "KUBE-SVC-A"]
        );
        assert_eq!(saved_chains(SAVE, "nat").len(), 12);
    }

    #[test]
    fn partial_restore_writes_only_changed_new_and_deleted_chains() {
        let previous = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SVC-B - [0:0]\n:KUBE-SEP-B1 - [0:0]\n-A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-A\n-A KUBE-SERVICES -d 10.0.0.2/32 -j KUBE-SVC-B\n-A KUBE-SVC-A -j KUBE-SEP-A1\n-A KUBE-SVC-B -j KUBE-SEP-B1\n-A KUBE-SEP-B1 -j DNAT --to-destination 172.16.1.2:80\nCOMMIT\n*filter\n:KUBE-FORWARD - [0:0]\n-A KUBE-FORWARD -j ACCEPT\nCOMMIT\n";
        // Service B moved to another endpoint: its SVC chain changes, SEP-B1 goes, SEP-B2 comes.
        let next = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SVC-B - [0:0]\n:KUBE-SEP-B2 - [0:0]\n:KUBE-SEP-B1 - [0:0]\n-A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-A\n-A KUBE-SERVICES -d 10.0.0.2/32 -j KUBE-SVC-B\n-A KUBE-SVC-A -j KUBE-SEP-A1\n-A KUBE-SVC-B -j KUBE-SEP-B2\n-A KUBE-SEP-B2 -j DNAT --to-destination 172.16.2.2:80\n-X KUBE-SEP-B1\nCOMMIT\n*filter\n:KUBE-FORWARD - [0:0]\n-A KUBE-FORWARD -j ACCEPT\nCOMMIT\n";
        assert_eq!(
            partial_restore(previous, next),
            "*nat\n:KUBE-SVC-B - [0:0]\n:KUBE-SEP-B2 - [0:0]\n:KUBE-SEP-B1 - [0:0]\n-A KUBE-SVC-B -j KUBE-SEP-B2\n-A KUBE-SEP-B2 -j DNAT --to-destination 172.16.2.2:80\n-X KUBE-SEP-B1\nCOMMIT\n"
        );
        assert_eq!(
            partial_restore(next, next)
                .replace("*nat\n:KUBE-SEP-B1 - [0:0]\n-X KUBE-SEP-B1\nCOMMIT\n", ""),
            ""
        );
        // With nothing applied before, everything is written.
        assert_eq!(partial_restore("", next), next);
    }

    /// Plays restore commands on a chain's rule list the way iptables does.
    fn play(chain: &str, rules: &[&str], commands: &[String]) -> Vec<String> {
        let mut live: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        for c in commands {
            let mut words = c.splitn(4, ' ');
            let (verb, on) = (words.next().unwrap(), words.next().unwrap());
            assert_eq!(on, chain, "{c}");
            let rest: Vec<&str> = words.collect();
            let rule = |args: &str| format!("-A {chain} {args}");
            match verb {
                "-A" => live.push(rule(&rest.join(" "))),
                "-D" => {
                    let n: usize = rest[0].parse().unwrap();
                    assert!(rest.len() == 1 && n >= 1 && n <= live.len(), "{c}");
                    live.remove(n - 1);
                }
                "-R" | "-I" => {
                    let n: usize = rest[0].parse().unwrap();
                    assert!(n >= 1 && n <= live.len(), "{c} on {} rules", live.len());
                    if verb == "-R" {
                        live[n - 1] = rule(rest[1]);
                    } else {
                        live.insert(n - 1, rule(rest[1]));
                    }
                }
                _ => panic!("unexpected command {c}"),
            }
        }
        live
    }

    #[test]
    fn rule_edits_turn_the_old_chain_into_the_new_one() {
        use rand::{Rng, SeedableRng};
        let chain = "KUBE-SERVICES";
        let rule = |i: usize| {
            format!(
                "-A {chain} -d 10.0.{}.{}/32 -j KUBE-SVC-{i}",
                i / 250,
                i % 250
            )
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut edited = 0;
        for case in 0..300 {
            let old: Vec<String> = (0..rng.random_range(16..120)).map(rule).collect();
            let mut new = old.clone();
            for _ in 0..rng.random_range(1..5) {
                let at = rng.random_range(0..new.len());
                match rng.random_range(0..3) {
                    0 => new[at] = rule(1000 + case * 10 + at),
                    1 => {
                        new.remove(at);
                    }
                    _ => new.insert(at, rule(5000 + case * 10 + at)),
                }
            }
            let (o, n): (Vec<&str>, Vec<&str>) = (
                old.iter().map(String::as_str).collect(),
                new.iter().map(String::as_str).collect(),
            );
            let Some(commands) = rule_edits(chain, &o, &n) else {
                continue;
            };
            assert_eq!(play(chain, &o, &commands), new, "case {case}: {commands:?}");
            edited += 1;
        }
        assert!(edited > 150, "only {edited} cases were edited in place");
        // One changed rule of a long chain is one replace; short chains are rewritten.
        let old: Vec<String> = (0..100).map(rule).collect();
        let mut new = old.clone();
        new[40] = rule(999);
        let o: Vec<&str> = old.iter().map(String::as_str).collect();
        let n: Vec<&str> = new.iter().map(String::as_str).collect();
        assert_eq!(
            rule_edits(chain, &o, &n).unwrap(),
            vec![format!("-R {chain} 41 -d 10.0.3.249/32 -j KUBE-SVC-999")]
        );
        assert!(rule_edits(chain, &o[..10], &n[..10]).is_none());
        // Many changes: rewrite.
        assert!(rule_edits(chain, &o, &n[50..]).is_none());
    }

    #[test]
    fn partial_nft_touches_only_what_changed() {
        let table = "add table ip kube-proxy\ndelete table ip kube-proxy\nadd table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n";
        let base = "add chain ip kube-proxy services\nadd map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\nadd rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n";
        let a = "add chain ip kube-proxy service-A\nadd chain ip kube-proxy endpoint-A1\nadd element ip kube-proxy service-ips { 10.0.0.1 . tcp . 80 : goto service-A }\nadd rule ip kube-proxy service-A numgen random mod 1 vmap { 0 : goto endpoint-A1 }\nadd rule ip kube-proxy endpoint-A1 meta l4proto tcp dnat to 172.16.1.2:80\n";
        let a2 = "add chain ip kube-proxy service-A\nadd chain ip kube-proxy endpoint-A2\nadd element ip kube-proxy service-ips { 10.0.0.1 . tcp . 80 : goto service-A }\nadd rule ip kube-proxy service-A numgen random mod 1 vmap { 0 : goto endpoint-A2 }\nadd rule ip kube-proxy endpoint-A2 meta l4proto tcp dnat to 172.16.2.2:80\n";
        let b = "add chain ip kube-proxy service-B\nadd element ip kube-proxy service-ips { 10.0.0.2 . tcp . 80 : goto service-B }\nadd rule ip kube-proxy service-B reject\n";
        let previous = format!("{table}{base}{a}{b}");
        // A's endpoint moved; B is gone.
        let next = format!("{table}{base}{a2}");
        assert_eq!(
            partial_nft(&previous, &next).unwrap(),
            "add chain ip kube-proxy endpoint-A2\n\
             flush chain ip kube-proxy service-A\n\
             add rule ip kube-proxy service-A numgen random mod 1 vmap { 0 : goto endpoint-A2 }\n\
             add rule ip kube-proxy endpoint-A2 meta l4proto tcp dnat to 172.16.2.2:80\n\
             delete element ip kube-proxy service-ips { 10.0.0.2 . tcp . 80 }\n\
             flush chain ip kube-proxy endpoint-A1\n\
             flush chain ip kube-proxy service-B\n\
             delete chain ip kube-proxy endpoint-A1\n\
             delete chain ip kube-proxy service-B\n"
        );
        assert_eq!(partial_nft(&next, &next).unwrap(), "");
        // A declaration that changed cannot be patched: apply everything.
        let changed = next.replace(
            "inet_service : verdict ;",
            "inet_service : verdict ; comment \"x\" ;",
        );
        assert!(partial_nft(&next, &changed).is_none());
    }

    /// The live renderers' output diffs: one service added or one endpoint moved gives a patch
    /// of that service only, in both the iptables and the nftables modes.
    #[test]
    fn partial_syncs_of_rendered_rule_sets_are_small() {
        use crate::proxy::{NodeContext, ProxyInput, ProxyMode, objects, render};
        let svc = |name: &str, ip: &str, endpoint: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-x, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints:\n- addresses: [{endpoint}]\n  conditions: {{ready: true}}\nports: [{{port: 80, protocol: TCP, name: \"\"}}]\n---\n"
            )
        };
        let rendered = |mode, text: &str| {
            let objs = objects::parse_yaml(text).unwrap();
            let mut node = NodeContext::new("n1", vec!["192.168.0.201".parse().unwrap()]);
            node.cluster_cidr = Some("172.16.0.0/16".parse().unwrap());
            render(
                mode,
                &ProxyInput::from_objects(node, &objs.services, &objs.endpoint_slices),
            )
        };
        let one = svc("a", "192.168.3.10", "172.16.1.2");
        let two = format!("{one}{}", svc("b", "192.168.3.11", "172.16.2.2"));
        let moved = format!("{one}{}", svc("b", "192.168.3.11", "172.16.3.3"));

        let (n2, nm) = (
            rendered(ProxyMode::Nftables, &two),
            rendered(ProxyMode::Nftables, &moved),
        );
        let added = partial_nft(&rendered(ProxyMode::Nftables, &one), &n2).unwrap();
        assert!(
            added.contains("default/b/") && !added.contains("default/a/"),
            "{added}"
        );
        let patch = partial_nft(&n2, &nm).unwrap();
        assert!(
            patch.contains("172.16.3.3") && patch.contains("delete chain"),
            "{patch}"
        );
        assert!(!patch.contains("default/a/"), "{patch}");

        let (i2, im) = (
            rendered(ProxyMode::Iptables, &two),
            rendered(ProxyMode::Iptables, &moved),
        );
        let patch = partial_restore(&i2, &im);
        assert!(patch.contains("172.16.3.3"), "{patch}");
        assert!(!patch.contains("default/a"), "{patch}");
        assert!(patch.lines().count() < i2.lines().count() / 2, "{patch}");
    }
}
