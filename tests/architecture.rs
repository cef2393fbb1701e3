//! The house reads from top to bottom: `docs/architecture.md`'s layer table is the map,
//! and every `crate::…` path in `src/**/*.rs` (test code aside) must follow it. A module
//! imports only its own layer and the layers below; no two modules import each other,
//! directly or in a circle. Inside `core/` and `adapters/` each child module (`core/decision`,
//! `adapters/storage`) counts on its own, so circles between adapters are found too.
//!
//! Inside `commands/`, no verb imports another verb: verbs share only the files
//! [`SHARED_COMMANDS`] names, and `commands/mod.rs` only hands each plan to its verb
//! (`verb::run`). The core reads no environment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Layers whose child modules are nodes of their own in the import graph.
const FOLDER_LAYERS: &[&str] = &["core", "adapters"];

/// The layer table of `docs/architecture.md`: rows `| <rank> | <layer> | <modules> | …`,
/// rank 1 at the bottom; modules are the backticked words of the third cell (`core/`,
/// `error.rs`). Returns top-level module name → (rank, layer name).
fn layer_map(doc: &str) -> BTreeMap<String, (u32, String)> {
    let mut map = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        let Ok(rank) = cells[1].parse::<u32>() else {
            continue;
        };
        for module in cells[3].split('`').skip(1).step_by(2) {
            let name = module
                .trim_end_matches('/')
                .trim_end_matches(".rs")
                .to_string();
            let previous = map.insert(name.clone(), (rank, cells[2].to_string()));
            assert!(previous.is_none(), "{name} is in two layers of the table");
        }
    }
    map
}

/// `text` with comments, string and char literals blanked (braces and `crate::` inside
/// them are not code), lengths kept.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend(s.iter().map(|&c| if c == b'\n' { c } else { b' ' }))
    };
    while i < b.len() {
        let rest = &b[i..];
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = 0;
            loop {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break j;
                    }
                } else {
                    j += 1;
                }
            }
        } else if (rest.starts_with(b"r#") || rest.starts_with(b"r\""))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let start = 2 + hashes;
            start
                + rest[start..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .unwrap()
                + close.len()
        } else if rest[0] == b'"' {
            let mut j = 1;
            while rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            j + 1
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{7f}', '{'); otherwise a lifetime.
            if rest.len() > 2 && rest[1] == b'\\' {
                2 + rest[2..].iter().position(|&c| c == b'\'').unwrap() + 1
            } else {
                let ch = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                if rest.get(1 + ch) == Some(&b'\'') {
                    ch + 2
                } else {
                    out.push(b'\'');
                    i += 1;
                    continue;
                }
            }
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        blank(&mut out, &rest[..end]);
        i += end;
    }
    String::from_utf8(out).unwrap()
}

/// `code` without the items under `#[cfg(test)]`; the names of test-only `mod x;` files
/// go to `test_mods`.
fn without_tests(code: &str, test_mods: &mut Vec<String>) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let brace = item.find('{');
        let semi = item.find(';');
        let end = match (brace, semi) {
            (_, Some(s)) if brace.is_none_or(|b| s < b) => {
                let decl = item[..s].split_whitespace().collect::<Vec<_>>();
                if let [.., "mod", name] = decl.as_slice() {
                    test_mods.push((*name).to_string());
                }
                s + 1
            }
            (Some(b), _) => {
                let mut depth = 0;
                let mut end = b;
                for (j, c) in item[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + j + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            _ => item.len(),
        };
        out.push_str(&" ".repeat(end));
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The module path of a source file: `src/adapters/storage/sql.rs` → `adapters::storage::sql`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(Path::new(ROOT).join("src")).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The graph node of a module path: the top-level module, or its child in a folder layer.
fn node(path: &[String]) -> String {
    match path {
        [layer, child, ..] if FOLDER_LAYERS.contains(&layer.as_str()) => {
            format!("{layer}::{child}")
        }
        [top, ..] => top.clone(),
        [] => String::new(),
    }
}

/// The first segments of every `crate::…` path in `code`; `crate::{a::x, b}` gives `a` and `b`.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|seg| {
                seg.trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|seg| !seg.is_empty())
            .take(2)
            .collect()
    };
    let mut paths = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        paths.push(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            paths.push(ident(&item));
        } else {
            paths.push(ident(rest));
        }
    }
    paths.retain(|p| !p.is_empty() && p[0] != "self");
    paths
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// node → the nodes it imports (non-test code of the library), and the test-only files.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    files.sort();
    let mut test_mods = Vec::new();
    let mut code = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut mods = Vec::new();
        code.insert(file.clone(), without_tests(&code_only(&text), &mut mods));
        let mut dir = file.parent().unwrap().to_path_buf();
        if !matches!(
            file.file_name().unwrap().to_str(),
            Some("mod.rs" | "lib.rs" | "main.rs")
        ) {
            dir = dir.join(file.file_stem().unwrap());
        }
        test_mods.extend(mods.into_iter().map(|m| dir.join(format!("{m}.rs"))));
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, code) in code {
        let module = module_of(&file);
        // The crate roots (lib.rs re-exports, main.rs the binary) and test-only files.
        if matches!(module.as_slice(), [m] if m == "lib" || m == "main")
            || test_mods.contains(&file)
        {
            continue;
        }
        let from = node(&module);
        let imports = graph.entry(from.clone()).or_default();
        for path in crate_paths(&code) {
            let to = node(&path);
            if to != from {
                imports.insert(to);
            }
        }
    }
    graph
}

/// The strongly connected components with more than one node (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let i = w.index.len();
        w.index.insert(v, i);
        w.low.insert(v, i);
        w.stack.push(v);
        for next in w.graph.get(v).into_iter().flatten() {
            let next = next.as_str();
            if !w.index.contains_key(next) {
                visit(w, next);
                let low = w.low[v].min(w.low[next]);
                w.low.insert(v, low);
            } else if w.stack.contains(&next) {
                let low = w.low[v].min(w.index[next]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let at = w.stack.iter().rposition(|&n| n == v).unwrap();
            let component: Vec<String> = w.stack.drain(at..).map(String::from).collect();
            if component.len() > 1 {
                w.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            visit(&mut walk, v);
        }
    }
    walk.found
}

fn architecture_doc() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("docs/architecture.md")).unwrap()
}

#[test]
fn every_module_imports_only_its_layer_and_those_below() {
    let layers = layer_map(&architecture_doc());
    assert!(layers.len() >= 5, "no layer table in docs/architecture.md");
    let graph = import_graph();
    let layer_of = |node: &str| {
        let top = node.split("::").next().unwrap();
        layers
            .get(top)
            .unwrap_or_else(|| panic!("src/{top} is in no layer of docs/architecture.md"))
    };
    let mut upward = Vec::new();
    for (from, imports) in &graph {
        let (rank, layer) = layer_of(from);
        for to in imports {
            let (to_rank, to_layer) = layer_of(to);
            if to_rank > rank {
                upward.push(format!("{from} ({layer}) imports {to} ({to_layer})"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports of a layer above:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_import_circles() {
    let found = circles(&import_graph());
    assert!(
        found.is_empty(),
        "import circles between modules:\n{}",
        found
            .iter()
            .map(|c| format!("one circle: {}", c.join(", ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_doc_names_every_module_of_core_and_adapters() {
    let doc = architecture_doc();
    let mut missing = Vec::new();
    for layer in FOLDER_LAYERS {
        for entry in std::fs::read_dir(Path::new(ROOT).join("src").join(layer)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().to_string();
            if name == "mod.rs" {
                continue;
            }
            let named = if name.ends_with(".rs") {
                format!("`{name}`")
            } else {
                format!("`{name}/`")
            };
            if !doc.contains(&named) {
                missing.push(format!("src/{layer}/{name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name: {}",
        missing.join(", ")
    );
}

#[test]
fn the_checker_reads_rust_as_rust() {
    let code = code_only(
        "use crate::a::x; // crate::b\nlet s = \"crate::c {\"; let c = '{'; fn f<'a>() {}\n\
         /* crate::d */ let r = r#\"crate::e\"#;",
    );
    assert_eq!(crate_paths(&code), [vec!["a".to_string(), "x".to_string()]]);
    let mut mods = Vec::new();
    let code = without_tests(
        "use crate::a;\n#[cfg(test)]\nmod memory;\n#[cfg(test)]\nmod tests { use crate::b; { } }\nuse crate::c::{d, e};",
        &mut mods,
    );
    assert_eq!(mods, ["memory"]);
    let firsts: Vec<String> = crate_paths(&code)
        .into_iter()
        .map(|p| p[0].clone())
        .collect();
    assert_eq!(firsts, ["a", "c"]);
    assert_eq!(
        crate_paths("use crate::{core::decision::Part, output};")
            .into_iter()
            .map(|p| p.join("::"))
            .collect::<Vec<_>>(),
        ["core::decision", "output"]
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", &["b"][..]),
        ("b", &["c"][..]),
        ("c", &["a"][..]),
        ("d", &["a"][..]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
    .collect();
    let found = circles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].iter().cloned().collect::<BTreeSet<_>>(),
        ["a", "b", "c"].map(String::from).into()
    );
    assert_eq!(
        layer_map("| 1 | core | `core/` | x |\n| 2 | top | `error.rs`, `cli.rs` | y |")["cli"],
        (2, "top".to_string())
    );
}

/// The files of `commands/` that verbs share (`docs/architecture.md`, commands row); every
/// other file but `mod.rs` is a verb.
const SHARED_COMMANDS: &[&str] = &["guard", "records", "session"];

/// The non-test code of each file in `dir`, by file stem.
fn code_of(dir: &Path) -> BTreeMap<String, String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut mods = Vec::new();
        let code = without_tests(&code_only(&text), &mut mods);
        let rel = file
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .to_string();
        out.insert(rel.trim_end_matches(".rs").to_string(), code);
    }
    out
}

/// The identifiers following `prefix` in `code` (`super::records` gives `records`).
fn after(code: &str, prefix: &str) -> Vec<String> {
    code.match_indices(prefix)
        .filter(|(at, _)| {
            !code[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        })
        .map(|(at, _)| {
            code[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// What each file of `commands/` names of its siblings: `super::x` and `crate::commands::x`.
fn sibling_uses(code: &str) -> Vec<String> {
    let mut uses = after(code, "super::");
    uses.extend(after(code, "crate::commands::"));
    uses
}

#[test]
fn no_verb_imports_another_verb_and_mod_rs_only_dispatches() {
    let files = code_of(&Path::new(ROOT).join("src/commands"));
    let doc = architecture_doc();
    let row = doc
        .lines()
        .find(|l| l.starts_with("| 6 | commands |"))
        .expect("the commands row of docs/architecture.md");
    for shared in SHARED_COMMANDS {
        assert!(
            row.contains(&format!("`{shared}.rs`")),
            "docs/architecture.md's commands row does not name the shared {shared}.rs"
        );
    }
    let verbs: Vec<&String> = files
        .keys()
        .filter(|f| *f != "mod" && !SHARED_COMMANDS.contains(&f.as_str()))
        .collect();
    assert!(verbs.len() >= 8, "verbs: {verbs:?}");
    let mut wrong = Vec::new();
    for (file, code) in &files {
        if file == "mod" {
            // Each verb named only to hand it its plan: `verb::run(`.
            for verb in &verbs {
                for (at, _) in code.match_indices(&format!("{verb}::")) {
                    let before = code[..at].chars().next_back();
                    if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                        continue;
                    }
                    if !code[at + verb.len() + 2..].starts_with("run(") {
                        wrong.push(format!(
                            "commands/mod.rs uses {verb}:: other than {verb}::run"
                        ));
                    }
                }
            }
            continue;
        }
        for used in sibling_uses(code) {
            if !SHARED_COMMANDS.contains(&used.as_str()) {
                let what = if verbs.iter().any(|v| **v == used) {
                    "the verb"
                } else {
                    "mod.rs's"
                };
                wrong.push(format!("commands/{file}.rs uses {what} {used}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_core_reads_no_environment() {
    let files = code_of(&Path::new(ROOT).join("src/core"));
    let readers: Vec<String> = files
        .iter()
        .filter(|(_, code)| {
            ["std::env", "env::var", "var_os(", "vars_os(", "env!("]
                .iter()
                .any(|r| code.contains(r))
        })
        .map(|(file, _)| format!("src/core/{file}.rs"))
        .collect();
    assert!(
        readers.is_empty(),
        "the core reads the environment (the plan reads it, through plan::Env): {readers:?}"
    );
}

#[test]
fn the_commands_checker_finds_what_it_looks_for() {
    let code = code_only("use super::records::Scope; let s = super::lock::run(p); // super::x\n");
    assert_eq!(sibling_uses(&code), ["records", "lock"]);
    assert_eq!(
        after(
            "crate::commands::policy::run(); other::crate::commands::x",
            "crate::commands::"
        ),
        ["policy"]
    );
}
