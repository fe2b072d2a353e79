//! Import cycles between the top-level modules of a crate: `cargo xtask cycles` prints the
//! graph and its cycles, and `cargo xtask test` checks the crates in [`CHECKED`] before it
//! builds anything.
//!
//! A top-level module is `src/X.rs` or `src/X/` (with a `mod.rs`), `lib.rs` and `main.rs` aside.
//! X imports Y when a file of X names `crate::Y`, or reaches the crate root through as many
//! `super`s as it is deep and names Y there: in a `use` tree (grouped ones too), in a path in
//! code or in a type, and in the tokens of a macro call (`log::error!("{}",
//! crate::error::chain(&e))`). The files are parsed with `syn`, so comments name nothing, and
//! attributes — doc comments among them — are skipped whole.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use proc_macro2::{Spacing, Span, TokenStream, TokenTree};
use syn::visit::Visit;

use crate::util::root;

/// A crate whose top-level modules must not import each other in a cycle.
pub struct Checked<'a> {
    /// Its source directory, relative to the workspace root (or absolute).
    pub src: &'a str,
    /// Its layers, top row first: a module may import modules of its own row and of the rows
    /// below, never above, and every module must be in a row (the layout README.md writes
    /// down). Empty: only cycles are checked.
    pub layers: &'a [&'a [&'a str]],
}

/// The node crate's layers, as README.md's layout section lists them.
pub const NODE_LAYERS: &[&[&str]] = &[
    &["app", "cli"],
    &["daemon"],
    &["inspect"],
    &["fleet"],
    &["events"],
    &["datapath"],
    &["azure"],
    &["system"],
];

/// The crates `cargo xtask test` checks, and `cargo xtask cycles` shows by default.
pub const CHECKED: &[Checked<'static>] = &[
    Checked {
        src: "egress-monitor/src",
        layers: NODE_LAYERS,
    },
    Checked {
        src: "egress-monitor-controller/src",
        layers: &[],
    },
    Checked {
        src: "egress-monitor-policy/src",
        layers: &[],
    },
    Checked {
        src: "egress-monitor-api/src",
        layers: &[],
    },
];

/// `cargo xtask test`'s step: fails when a checked crate has an import cycle or breaks its layers.
pub fn check(crates: &[Checked]) -> anyhow::Result<()> {
    eprintln!("==> import cycles");
    let mut failed = String::new();
    for krate in crates {
        let graph = Graph::read(&root().join(krate.src))?;
        let cycles = graph.cycles();
        let upward = graph.layer_violations(krate.layers);
        if cycles.is_empty() && upward.is_empty() {
            eprintln!("    {}: no cycle, no import against its layers", krate.src);
            continue;
        }
        let mut report = String::new();
        if !cycles.is_empty() {
            report.push_str(&graph.render_cycles(&cycles));
        }
        for violation in &upward {
            let _ = writeln!(report, "  {violation}");
        }
        failed.push_str(&report);
    }
    if !failed.is_empty() {
        bail!("{}", failed.trim_end());
    }
    Ok(())
}

/// `cargo xtask cycles`: the graph and cycles of each source directory (by default the
/// [`CHECKED`] ones); fails when there is a cycle.
pub fn show(srcs: &[PathBuf]) -> anyhow::Result<()> {
    let srcs: Vec<PathBuf> = if srcs.is_empty() {
        CHECKED.iter().map(|krate| root().join(krate.src)).collect()
    } else {
        srcs.to_vec()
    };
    let mut cyclic = Vec::new();
    for src in &srcs {
        let graph = Graph::read(src)?;
        print!("{}", graph.render());
        let cycles = graph.cycles();
        if cycles.is_empty() {
            println!("no import cycle");
        } else {
            print!("{}", graph.render_cycles(&cycles));
            cyclic.push(graph.shown_src());
        }
        println!();
    }
    if !cyclic.is_empty() {
        bail!("import cycles in {}", cyclic.join(", "));
    }
    Ok(())
}

/// Where one module names another: the first place found (files in path order, then by line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Relative to the crate's source directory.
    pub file: PathBuf,
    pub line: usize,
}

/// The imports between a crate's top-level modules.
#[derive(Debug)]
pub struct Graph {
    src: PathBuf,
    modules: BTreeSet<String>,
    /// From → to → where; no module imports itself here.
    edges: BTreeMap<String, BTreeMap<String, Site>>,
}

impl Graph {
    /// Reads and parses every file of the crate whose source directory is `src`.
    pub fn read(src: &Path) -> anyhow::Result<Graph> {
        let modules = top_level_modules(src)?;
        let mut edges: BTreeMap<String, BTreeMap<String, Site>> = BTreeMap::new();
        for module in &modules {
            for file in module_files(src, module)? {
                let relative = file.strip_prefix(src).expect("found under src").to_owned();
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let named = names_in(&text, module_depth(&relative), &modules)
                    .with_context(|| format!("parsing {}", file.display()))?;
                for (to, line) in named {
                    if to != *module {
                        edges
                            .entry(module.clone())
                            .or_default()
                            .entry(to)
                            .or_insert_with(|| Site {
                                file: relative.clone(),
                                line,
                            });
                    }
                }
            }
        }
        Ok(Graph {
            src: src.to_owned(),
            modules,
            edges,
        })
    }

    /// What breaks `layers` (top row first): a module in no row, and every import of a module
    /// from a row above its own, with where it is. Nothing when `layers` is empty.
    pub fn layer_violations(&self, layers: &[&[&str]]) -> Vec<String> {
        if layers.is_empty() {
            return Vec::new();
        }
        let row = |module: &str| layers.iter().position(|row| row.contains(&module));
        let mut found = Vec::new();
        for module in &self.modules {
            if row(module).is_none() {
                found.push(format!(
                    "{}: module `{module}` is in no layer (add it to the layers in xtask/src/cycles.rs and to README.md's layout)",
                    self.shown_src()
                ));
            }
        }
        for (from, targets) in &self.edges {
            for (to, site) in targets {
                if let (Some(from_row), Some(to_row)) = (row(from), row(to))
                    && to_row < from_row
                {
                    found.push(format!(
                        "{from} (row {}) imports {to} (row {}), a row above its own: {}:{}",
                        from_row + 1,
                        to_row + 1,
                        self.src.join(&site.file).display(),
                        site.line
                    ));
                }
            }
        }
        found
    }

    fn targets(&self, from: &str) -> impl Iterator<Item = &String> {
        self.edges.get(from).into_iter().flat_map(BTreeMap::keys)
    }

    /// Every cycle worth reading: for each import between two modules of a strongly connected
    /// set, the shortest cycle through it, so that every import that takes part in a cycle is
    /// shown. Each cycle once, closed (`[a, b, a]`), starting at its first module by name;
    /// shortest first.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let reach: BTreeMap<&String, BTreeSet<&String>> = self
            .modules
            .iter()
            .map(|module| (module, self.reachable(module)))
            .collect();
        let mut cycles = BTreeSet::new();
        for (from, to) in self
            .edges
            .iter()
            .flat_map(|(from, targets)| targets.keys().map(move |to| (from, to)))
        {
            if !reach[to].contains(from) {
                continue;
            }
            // The way back from `to`, within the modules both reach (the strongly connected set).
            let within =
                |module: &String| reach[from].contains(module) && reach[module].contains(from);
            let mut cycle = vec![from.clone()];
            cycle.extend(self.shortest_path(to, from, within));
            cycles.insert(rotated(cycle));
        }
        let mut cycles: Vec<_> = cycles.into_iter().collect();
        cycles.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        cycles
    }

    /// Every module `start` leads to, itself only through a cycle.
    fn reachable(&self, start: &str) -> BTreeSet<&String> {
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<&String> = self.targets(start).collect();
        while let Some(module) = queue.pop_front() {
            if seen.insert(module) {
                queue.extend(self.targets(module));
            }
        }
        seen
    }

    /// The shortest path `start` → … → `goal` through modules that pass `within` (neighbours
    /// in name order, so the same graph always gives the same path).
    fn shortest_path(
        &self,
        start: &String,
        goal: &String,
        within: impl Fn(&String) -> bool,
    ) -> Vec<String> {
        let mut previous: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(module) = queue.pop_front() {
            if module == goal {
                break;
            }
            for next in self.targets(module) {
                if next != start && within(next) && !previous.contains_key(next) {
                    previous.insert(next, module);
                    queue.push_back(next);
                }
            }
        }
        let mut path = vec![goal.clone()];
        let mut at = goal;
        while at != start {
            at = previous[at];
            path.push(at.clone());
        }
        path.reverse();
        path
    }

    /// The source directory as the developer knows it: relative to the workspace if inside.
    fn shown_src(&self) -> String {
        self.src
            .strip_prefix(root())
            .unwrap_or(&self.src)
            .display()
            .to_string()
    }

    /// `src: N modules, N imports`, then each module's imports.
    pub fn render(&self) -> String {
        let imports: usize = self.edges.values().map(BTreeMap::len).sum();
        let mut out = format!(
            "{}: {} top-level modules, {imports} imports between them\n",
            self.shown_src(),
            self.modules.len()
        );
        let width = self.modules.iter().map(String::len).max().unwrap_or(0);
        for module in &self.modules {
            let targets: Vec<&str> = self.targets(module).map(String::as_str).collect();
            let _ = writeln!(out, "  {module:<width$} -> {}", targets.join(" "));
        }
        out
    }

    /// Each cycle as `a -> b -> a`, then where each of its imports is.
    pub fn render_cycles(&self, cycles: &[Vec<String>]) -> String {
        let mut out = format!(
            "{}: {} import cycle(s) between top-level modules\n",
            self.shown_src(),
            cycles.len()
        );
        let shown = PathBuf::from(self.shown_src());
        for cycle in cycles {
            let _ = writeln!(out, "  {}", cycle.join(" -> "));
            let width = cycle
                .windows(2)
                .map(|pair| pair[0].len() + pair[1].len() + 4)
                .max();
            for pair in cycle.windows(2) {
                let site = &self.edges[&pair[0]][&pair[1]];
                let edge = format!("{} -> {}", pair[0], pair[1]);
                let _ = writeln!(
                    out,
                    "      {edge:<width$}  {}:{}",
                    shown.join(&site.file).display(),
                    site.line,
                    width = width.unwrap_or(0),
                );
            }
        }
        out
    }
}

/// A closed cycle started at its first module by name, so each cycle has one form.
fn rotated(mut cycle: Vec<String>) -> Vec<String> {
    cycle.pop();
    let first = (0..cycle.len())
        .min_by_key(|&i| &cycle[i])
        .expect("a cycle has modules");
    cycle.rotate_left(first);
    cycle.push(cycle[0].clone());
    cycle
}

/// `src/X.rs` and `src/X/mod.rs`, less `lib.rs`, `main.rs` and `src/bin/`.
fn top_level_modules(src: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_stem().and_then(|name| name.to_str()) else {
            continue;
        };
        let module = if path.is_dir() {
            path.join("mod.rs").is_file() && name != "bin"
        } else {
            path.extension().is_some_and(|ext| ext == "rs") && name != "lib" && name != "main"
        };
        if module {
            modules.insert(name.to_owned());
        }
    }
    Ok(modules)
}

/// The files of a top-level module, in path order.
fn module_files(src: &Path, module: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        if !dir.is_dir() {
            continue;
        }
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// How deep below the crate root the code of a file is: `X.rs` and `X/mod.rs` 1, `X/y.rs` 2.
fn module_depth(relative: &Path) -> usize {
    let depth = relative.components().count();
    if relative.file_name().is_some_and(|name| name == "mod.rs") {
        depth - 1
    } else {
        depth
    }
}

/// The top-level modules (of `modules`) that a file `depth` deep names, with the line of each
/// naming, in line order.
fn names_in(
    source: &str,
    depth: usize,
    modules: &BTreeSet<String>,
) -> syn::Result<Vec<(String, usize)>> {
    let file = syn::parse_file(source)?;
    let mut finder = Finder {
        modules,
        depth,
        found: Vec::new(),
    };
    finder.visit_file(&file);
    finder.found.sort_by_key(|(_, line)| *line);
    Ok(finder.found)
}

struct Finder<'a> {
    modules: &'a BTreeSet<String>,
    /// How deep below the crate root the code being visited is (the file's depth plus the
    /// inline modules around it).
    depth: usize,
    found: Vec<(String, usize)>,
}

impl Finder<'_> {
    /// Records the top-level module a path names from the crate root: `crate::Y…`, or
    /// `super::…::Y…` with as many `super`s as the code is deep.
    fn path(&mut self, segments: &[(String, Span)]) {
        let rest = match segments.first().map(|(name, _)| name.as_str()) {
            Some("crate") => &segments[1..],
            Some("super") => {
                let supers = segments
                    .iter()
                    .take_while(|(name, _)| name == "super")
                    .count();
                if supers != self.depth {
                    return;
                }
                &segments[supers..]
            }
            _ => return,
        };
        if let Some((name, span)) = rest.first()
            && self.modules.contains(name)
        {
            self.found.push((name.clone(), span.start().line));
        }
    }

    fn use_tree(&mut self, tree: &syn::UseTree, prefix: &mut Vec<(String, Span)>) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push((path.ident.to_string(), path.ident.span()));
                self.use_tree(&path.tree, prefix);
                prefix.pop();
            }
            syn::UseTree::Name(syn::UseName { ident })
            | syn::UseTree::Rename(syn::UseRename { ident, .. }) => {
                prefix.push((ident.to_string(), ident.span()));
                self.path(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.path(prefix),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(tree, prefix);
                }
            }
        }
    }

    /// Paths in tokens that syn leaves unparsed (a macro call's arguments): identifiers
    /// joined by `::`.
    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(group) => {
                    self.tokens(group.stream());
                    i += 1;
                }
                TokenTree::Ident(_) => {
                    let mut segments = Vec::new();
                    while let Some(TokenTree::Ident(ident)) = tokens.get(i) {
                        segments.push((ident.to_string(), ident.span()));
                        i += 1;
                        if !(is_path_separator(&tokens[i..])
                            && matches!(tokens.get(i + 2), Some(TokenTree::Ident(_))))
                        {
                            break;
                        }
                        i += 2;
                    }
                    self.path(&segments);
                }
                _ => i += 1,
            }
        }
    }
}

fn is_path_separator(tokens: &[TokenTree]) -> bool {
    matches!(
        tokens,
        [TokenTree::Punct(first), TokenTree::Punct(second), ..]
            if first.as_char() == ':' && first.spacing() == Spacing::Joint && second.as_char() == ':'
    )
}

impl<'ast> Visit<'ast> for Finder<'_> {
    /// Attributes, doc comments among them, name no dependency.
    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {}

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.depth += 1;
        syn::visit::visit_item_mod(self, item);
        self.depth -= 1;
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if item.leading_colon.is_none() {
            self.use_tree(&item.tree, &mut Vec::new());
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segments: Vec<(String, Span)> = path
                .segments
                .iter()
                .map(|segment| (segment.ident.to_string(), segment.ident.span()))
                .collect();
            self.path(&segments);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        syn::visit::visit_macro(self, mac);
        self.tokens(mac.tokens.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn named(source: &str, depth: usize) -> Vec<(String, usize)> {
        names_in(source, depth, &modules(&["a", "b", "c", "d", "e", "f"])).unwrap()
    }

    fn found(pairs: &[(&str, usize)]) -> Vec<(String, usize)> {
        pairs
            .iter()
            .map(|(name, line)| ((*name).to_owned(), *line))
            .collect()
    }

    /// A crate in a temporary directory: `(path under src/, contents)`.
    fn planted(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join("src").join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn check_one(dir: &tempfile::TempDir) -> anyhow::Result<()> {
        let src = dir.path().join("src");
        check(&[Checked {
            src: src.to_str().unwrap(),
            layers: &[],
        }])
    }

    #[test]
    fn a_planted_cycle_fails_naming_the_chain_and_where_each_import_is() {
        let dir = planted(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n"),
            ("main.rs", "use crate::a::A;\n"),
            ("a.rs", "//! A.\n\nuse crate::b::B;\npub struct A;\n"),
            ("b/mod.rs", "mod inner;\npub struct B;\n"),
            ("b/inner.rs", "pub fn f() {\n    crate::c::g();\n}\n"),
            (
                "c.rs",
                "use crate::{\n    a::A,\n    d,\n};\npub fn g() {}\n",
            ),
            ("d.rs", "pub fn h() {}\n"),
        ]);
        let err = check_one(&dir).unwrap_err().to_string();
        assert!(err.contains("\n  a -> b -> c -> a\n"), "{err}");
        let src = dir.path().join("src");
        for site in ["a.rs:3", "b/inner.rs:2", "c.rs:2"] {
            assert!(
                err.contains(&format!("{}", src.join(site).display())),
                "{site}: {err}"
            );
        }
        // main.rs is not a module, and d (imported, importing nothing) is in no cycle.
        let graph = Graph::read(&src).unwrap();
        assert_eq!(graph.modules, modules(&["a", "b", "c", "d"]));
        assert_eq!(graph.cycles(), vec![vec!["a", "b", "c", "a"]]);
    }

    #[test]
    fn an_acyclic_crate_passes() {
        let dir = planted(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
            ("a.rs", "use crate::{b::B, c};\n"),
            ("b.rs", "pub struct B(crate::c::C);\n"),
            // Naming itself is no cycle.
            ("c.rs", "pub struct C;\nfn f() -> crate::c::C { C }\n"),
        ]);
        check_one(&dir).unwrap();
        let graph = Graph::read(&dir.path().join("src")).unwrap();
        assert!(graph.render().contains("  a -> b c\n  b -> c\n  c -> \n"));
    }

    #[test]
    fn grouped_uses_paths_in_code_types_and_macro_arguments_are_found() {
        let source = "\
use crate::{a::x, b as bee, c::*};
fn f() -> crate::d::T {
    log::error!(\"{}\", crate::e::chain(&err));
    let _ = <crate::f::S as Default>::default();
}
";
        assert_eq!(
            named(source, 1),
            found(&[("a", 1), ("b", 1), ("c", 1), ("d", 2), ("e", 3), ("f", 4)])
        );
        // A path that only starts at the crate root (`crate::*`, an item of lib.rs) names no
        // module; neither does another crate's path.
        assert!(
            named(
                "use crate::*;\nuse crate::Thing;\nuse other::a;\nuse ::a::b;\n",
                1
            )
            .is_empty()
        );
    }

    #[test]
    fn super_reaches_the_crate_root_only_from_as_deep_as_it_climbs() {
        assert_eq!(named("use super::a;\n", 1), found(&[("a", 1)]));
        assert!(named("use super::a;\n", 2).is_empty());
        assert_eq!(
            named("use super::super::{b, c::y};\n", 2),
            found(&[("b", 1), ("c", 1)])
        );
        let with_tests =
            "#[cfg(test)]\nmod tests {\n    use super::*;\n    use super::super::d;\n}\n";
        assert_eq!(named(with_tests, 1), found(&[("d", 4)]));
        assert_eq!(
            named("macro_rules! m { () => { super::e::f() }; }\n", 1),
            found(&[("e", 1)])
        );
    }

    #[test]
    fn comments_and_doc_comments_name_nothing() {
        let source = "\
//! See [`crate::a`] and crate::b.
/// Uses [`crate::c::X`].
// crate::d::y()
/* crate::e */
#[doc = \"crate::f\"]
#[cfg_attr(test, doc = \"[`crate::a`]\")]
fn f() {
    let _ = \"crate::b::c\";
    log::info!(\"crate::c {}\", 1);
}
";
        assert!(named(source, 1).is_empty(), "{:?}", named(source, 1));
    }

    #[test]
    fn every_import_in_a_cycle_is_in_a_reported_cycle() {
        let dir = planted(&[
            ("a.rs", "use crate::b::X;\n"),
            ("b.rs", "use crate::{a::Y, c::Z};\n"),
            ("c.rs", "use crate::a::Y;\nuse crate::d::W;\n"),
            ("d.rs", "\n"),
            ("e/mod.rs", "use crate::a::Y;\n"),
        ]);
        let graph = Graph::read(&dir.path().join("src")).unwrap();
        assert_eq!(
            graph.cycles(),
            vec![vec!["a", "b", "a"], vec!["a", "b", "c", "a"]]
        );
        let report = graph.render_cycles(&graph.cycles());
        assert!(report.contains("  a -> b -> c -> a\n"), "{report}");
        assert!(report.contains("      c -> a  "), "{report}");
    }

    #[test]
    fn an_import_from_a_row_above_fails_and_so_does_a_module_in_no_row() {
        let dir = planted(&[
            ("lib.rs", "pub mod top;\npub mod low;\npub mod stray;\n"),
            ("top.rs", "use crate::low::L;\npub struct T;\n"),
            (
                "low.rs",
                "pub struct L;\n\npub fn f() {\n    let _ = crate::top::T;\n}\n",
            ),
            ("stray.rs", "pub fn s() {}\n"),
        ]);
        let src = dir.path().join("src");
        let graph = Graph::read(&src).unwrap();
        let found = graph.layer_violations(&[&["top"], &["low"]]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("module `stray` is in no layer"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("low (row 2) imports top (row 1), a row above its own: ")
                && found[1].ends_with("low.rs:4"),
            "{found:?}"
        );
        assert!(
            graph
                .layer_violations(&[&["top"], &["low", "stray"]])
                .iter()
                .all(|v| !v.contains("stray")),
        );
        let err = check(&[Checked {
            src: src.to_str().unwrap(),
            layers: &[&["top"], &["low", "stray"]],
        }])
        .unwrap_err()
        .to_string();
        assert!(err.contains("a row above its own"), "{err}");
    }
}
