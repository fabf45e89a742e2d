//! The crate's layers only point down, and no modules import each other in a circle.
//!
//! Every module under src/ is read as text: its `use` trees and the `crate::`, `super::` and
//! `self::` paths in its code, plus paths through its own child modules, each resolved to the
//! deepest module file it names. Test code (`#[cfg(test)]` modules, which are last in their
//! files) may reach up and is not read. Two rules:
//! - a top-level module imports only from lower layers ([`LAYERS`], the order
//!   docs/ARCHITECTURE.md describes);
//! - inside a module, its files (the parent and its children, and siblings among themselves)
//!   import each other without a circle.
//!
//! Re-exports in a parent (`pub use child::Item`) are declarations, not dependencies, so a
//! parent that only re-exports its children has no edge to them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules from the bottom up; a module may import only from earlier rows.
const LAYERS: &[&[&str]] = &[
    &["output"],
    &["diag", "tensor"],
    &["kernel"],
    &["ops"],
    &["graph", "config"],
    &["nn", "autodiff"],
    &["training", "schedule"],
    &["backend", "checkpoint"],
    &["gradcheck", "data"],
    &["train", "bench"],
    &["cli"],
];

type Module = Vec<String>;

/// Module path (without `crate`) → the file's text before its test modules.
fn modules() -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut test_files = BTreeSet::new();
    walk(Path::new("src"), &mut |path| {
        let rel = path.strip_prefix("src").unwrap().with_extension("");
        let mut m: Module = rel
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        if m.last()
            .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
        {
            m.pop();
        }
        let text = std::fs::read_to_string(path).unwrap();
        let (code, tests) = split_tests(&text, path);
        // `#[cfg(test)] mod tests;`: that file is test code.
        for t in tests {
            let mut child = m.clone();
            child.push(t);
            test_files.insert(child);
        }
        out.insert(m, code);
    });
    out.retain(|m, _| !test_files.contains(m));
    out
}

fn walk(dir: &Path, f: &mut impl FnMut(&Path)) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, f);
        } else if p.extension().is_some_and(|e| e == "rs") {
            f(&p);
        }
    }
}

/// The code before the first top-level `#[cfg(test)]`, and the names of test modules kept in files of
/// their own. Everything from that attribute on must be test modules.
fn split_tests(text: &str, path: &Path) -> (String, Vec<String>) {
    let lines: Vec<&str> = text.lines().collect();
    // Top-level test items only: an indented `#[cfg(test)]` helper inside an impl is code.
    let Some(first) = lines.iter().position(|l| *l == "#[cfg(test)]") else {
        return (strip_comments(text), vec![]);
    };
    let mut files = vec![];
    for (i, l) in lines.iter().enumerate().skip(first) {
        if *l != "#[cfg(test)]" {
            continue;
        }
        let next = lines.get(i + 1).map(|n| n.trim()).unwrap_or("");
        let item = next
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ");
        assert!(
            item.starts_with("mod "),
            "{}:{}: only test modules may follow the first #[cfg(test)] (imports there are not checked)",
            path.display(),
            i + 2
        );
        if let Some(name) = item.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            files.push(name.trim().to_string());
        }
    }
    (strip_comments(&lines[..first].join("\n")), files)
}

/// The code with comments and the contents of string and char literals removed (doc
/// comments and messages name paths that are not imports); line breaks are kept.
fn strip_comments(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let get = |i: usize| c.get(i).copied().unwrap_or(' ');
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        if get(i) == '/' && get(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if get(i) == '/' && get(i + 1) == '*' {
            while i < c.len() && !(c[i] == '*' && get(i + 1) == '/') {
                out.push(if c[i] == '\n' { '\n' } else { ' ' });
                i += 1;
            }
            i += 2;
        } else if get(i) == 'r' && (get(i + 1) == '"' || (get(i + 1) == '#' && get(i + 2) == '"')) {
            let hashes = if get(i + 1) == '#' { 1 } else { 0 };
            i += 2 + hashes;
            while i < c.len() && !(c[i] == '"' && (hashes == 0 || get(i + 1) == '#')) {
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if get(i) == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if get(i) == '\''
            && (get(i + 2) == '\'' || (get(i + 1) == '\\' && get(i + 3) == '\''))
        {
            i += if get(i + 1) == '\\' { 4 } else { 3 };
            out.push_str("' '");
        } else {
            out.push(get(i));
            i += 1;
        }
    }
    out
}

/// Every path a module's code names, as written (segments), from `use` trees and from
/// expressions and types. A parent's re-exports (`pub use child::Item`) are left out.
fn paths(code: &str, children: &BTreeSet<String>, is_parent: bool) -> Vec<Vec<String>> {
    let mut out = vec![];
    let mut body = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(i) = find_use(rest) {
        let (before, after) = (&rest[..i], &rest[i..]);
        let end = after.find(';').unwrap_or(after.len());
        let vis = before.trim_end();
        let reexport = vis.ends_with("pub") || vis.ends_with(')');
        if !(is_parent && reexport) {
            expand(&after[4..end], &mut vec![], &mut out);
        }
        body.push_str(before);
        rest = &after[end..];
    }
    body.push_str(rest);
    let starts: Vec<&str> = ["crate", "super", "self"]
        .into_iter()
        .chain(children.iter().map(String::as_str))
        .collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (i, _) in body.char_indices() {
        if body[..i].ends_with(|c: char| ident(c) || c == ':') {
            continue;
        }
        for s in &starts {
            if body[i..].starts_with(s) && body[i + s.len()..].starts_with("::") {
                let text = body[i..]
                    .split(|c: char| !(ident(c) || c == ':'))
                    .next()
                    .unwrap();
                out.push(
                    text.split("::")
                        .filter(|p| !p.is_empty())
                        .map(String::from)
                        .collect(),
                );
            }
        }
    }
    out
}

fn find_use(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find("use ") {
        let at = from + i;
        let before = text[..at].chars().last();
        if before.is_none_or(|c| c.is_whitespace() || c == ')') {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// Expands a use tree (`a::{b, c::{d as e}}`) into full paths.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let n = prefix.len();
        prefix.extend(head);
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], prefix, out);
        prefix.truncate(n);
    } else if !tree.is_empty() {
        let name = tree.split(" as ").next().unwrap();
        let mut p = prefix.clone();
        p.extend(
            name.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "*")
                .map(String::from),
        );
        if p.last().is_some_and(|l| l == "self") {
            p.pop();
        }
        out.push(p);
    }
}

/// A parent's `pub use child::Item` lines: (parent, item name) → the child that defines it.
type Reexports = BTreeMap<(Module, String), Module>;

fn reexports(known: &BTreeMap<Module, String>) -> Reexports {
    let mut out = Reexports::new();
    for (m, code) in known {
        let mut rest = code.as_str();
        while let Some(i) = find_use(rest) {
            let (before, after) = (&rest[..i], &rest[i..]);
            let end = after.find(';').unwrap_or(after.len());
            let vis = before.trim_end();
            if vis.ends_with("pub") || vis.ends_with(')') {
                let mut paths = vec![];
                expand(&after[4..end], &mut vec![], &mut paths);
                for p in paths {
                    let child = p.first().cloned().unwrap_or_default();
                    let mut c = m.clone();
                    c.push(child);
                    if known.contains_key(&c)
                        && let Some(target) = deepest(c, &p[1..], known, &Reexports::new())
                    {
                        out.insert((m.clone(), p.last().unwrap().clone()), target);
                    }
                }
            }
            rest = &after[end..];
        }
    }
    out
}

/// The module a path leads to: the deepest existing module on it, through re-exports; None
/// outside the crate.
fn resolve(
    from: &Module,
    path: &[String],
    known: &BTreeMap<Module, String>,
    children: &BTreeSet<String>,
    re: &Reexports,
) -> Option<Module> {
    let mut base: Module = match path.first()?.as_str() {
        "crate" => vec![],
        "self" => from.clone(),
        "super" => {
            let mut b = from.clone();
            let mut k = 0;
            while path.get(k).is_some_and(|s| s == "super") {
                b.pop();
                k += 1;
            }
            return deepest(b, &path[k..], known, re);
        }
        c if children.contains(c) => {
            let mut b = from.clone();
            b.push(c.to_string());
            return deepest(b, &path[1..], known, re);
        }
        _ => return None,
    };
    base.truncate(base.len());
    deepest(base, &path[1..], known, re)
}

fn deepest(
    mut base: Module,
    rest: &[String],
    known: &BTreeMap<Module, String>,
    re: &Reexports,
) -> Option<Module> {
    for seg in rest {
        let mut next = base.clone();
        next.push(seg.clone());
        if known.contains_key(&next) {
            base = next;
        } else {
            // An item: where it is defined, if its module only re-exports it.
            return Some(
                re.get(&(base.clone(), seg.clone()))
                    .cloned()
                    .unwrap_or(base),
            );
        }
    }
    Some(base)
}

/// (from, to) module dependencies, test code excluded.
fn edges() -> (BTreeMap<Module, String>, BTreeSet<(Module, Module)>) {
    let known = modules();
    let re = reexports(&known);
    let mut edges = BTreeSet::new();
    for (m, code) in &known {
        let children: BTreeSet<String> = known
            .keys()
            .filter(|k| k.len() == m.len() + 1 && k.starts_with(m))
            .map(|k| k.last().unwrap().clone())
            .collect();
        let is_parent = !children.is_empty();
        for p in paths(code, &children, is_parent) {
            if let Some(to) = resolve(m, &p, &known, &children, &re)
                && &to != m
                && !to.is_empty()
            {
                edges.insert((m.clone(), to));
            }
        }
    }
    (known, edges)
}

fn level(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|row| row.contains(&top))
        .unwrap_or_else(|| panic!("src/{top} is in no row of LAYERS (tests/layers.rs): place it"))
}

#[test]
fn top_level_modules_import_only_from_lower_layers() {
    let (known, edges) = edges();
    for m in known.keys().filter(|m| m.len() == 1) {
        level(&m[0]);
    }
    let mut bad = vec![];
    for (a, b) in &edges {
        if a[0] != b[0] && level(&a[0]) <= level(&b[0]) {
            bad.push(format!("{} imports {}", a.join("::"), b.join("::")));
        }
    }
    assert!(
        bad.is_empty(),
        "imports that point up or sideways (LAYERS in tests/layers.rs, docs/ARCHITECTURE.md):\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let (_, edges) = edges();
    // Each edge, lifted to the two modules under the closest common parent.
    let mut groups: BTreeMap<Module, BTreeSet<(Module, Module)>> = BTreeMap::new();
    for (a, b) in &edges {
        let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let lift = |m: &Module| m[..(common + 1).min(m.len())].to_vec();
        let (la, lb) = (lift(a), lift(b));
        if la != lb {
            groups
                .entry(a[..common].to_vec())
                .or_default()
                .insert((la, lb));
        }
    }
    let mut circles = vec![];
    for (parent, group) in &groups {
        if let Some(c) = find_cycle(group) {
            let names: Vec<String> = c.iter().map(|m| m.join("::")).collect();
            circles.push(format!(
                "in crate::{}: {}",
                parent.join("::"),
                names.join(" -> ")
            ));
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

fn find_cycle(edges: &BTreeSet<(Module, Module)>) -> Option<Vec<Module>> {
    let nodes: BTreeSet<&Module> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let mut state: BTreeMap<&Module, u8> = BTreeMap::new();
    fn dfs<'a>(
        n: &'a Module,
        edges: &'a BTreeSet<(Module, Module)>,
        state: &mut BTreeMap<&'a Module, u8>,
        stack: &mut Vec<&'a Module>,
    ) -> Option<Vec<Module>> {
        state.insert(n, 1);
        stack.push(n);
        for (_, b) in edges.iter().filter(|(a, _)| a == n) {
            match state.get(b).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|m| *m == b).unwrap();
                    let mut c: Vec<Module> = stack[from..].iter().map(|m| (*m).clone()).collect();
                    c.push(b.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = dfs(b, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    for n in nodes {
        if state.get(n).copied().unwrap_or(0) == 0
            && let Some(c) = dfs(n, edges, &mut state, &mut vec![])
        {
            return Some(c);
        }
    }
    None
}

/// The checker itself: a circle and an upward import are found in made-up code.
#[test]
fn the_checker_sees_imports_in_use_trees_and_paths() {
    let code = "use super::{alloc::REGIONS, Gpu};\nuse crate::ops::{self, OpKind};\nfn f() { crate::schedule::human(1); exec::storage(); }\n";
    let children: BTreeSet<String> = ["exec".to_string()].into();
    let ps = paths(&strip_comments(code), &children, false);
    let want: Vec<Vec<&str>> = vec![
        vec!["super", "alloc", "REGIONS"],
        vec!["super", "Gpu"],
        vec!["crate", "ops"],
        vec!["crate", "ops", "OpKind"],
        vec!["crate", "schedule", "human"],
        vec!["exec", "storage"],
    ];
    for w in want {
        assert!(
            ps.iter()
                .any(|p| p.iter().map(String::as_str).eq(w.iter().copied())),
            "{w:?} not found in {ps:?}"
        );
    }
    // A comment or a string names no import.
    assert!(
        paths(
            &strip_comments("// crate::cli::x\nlet s = \"crate::cli::y\";\n"),
            &BTreeSet::new(),
            false
        )
        .is_empty()
    );
    let m = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Module>();
    let cyc: BTreeSet<(Module, Module)> = [
        (m(&["a"]), m(&["b"])),
        (m(&["b"]), m(&["c"])),
        (m(&["c"]), m(&["a"])),
    ]
    .into();
    assert!(find_cycle(&cyc).is_some());
    let dag: BTreeSet<(Module, Module)> = [
        (m(&["a"]), m(&["b"])),
        (m(&["b"]), m(&["c"])),
        (m(&["a"]), m(&["c"])),
    ]
    .into();
    assert!(find_cycle(&dag).is_none());
}
