//! syn_parse: a realistic Rust workload: Rust source (generated here,
//! deterministically: modules of structs, enums, impls and functions with
//! loops, matches, closures and nested expressions) parsed into `syn`'s
//! syntax tree and walked, several times over. syn allocates a tree of
//! boxes, vectors and token strings per parse, all dropped together.

use std::fmt::Write;

use bench_programs::{Args, Rng};
use syn::{Block, Expr, Item, Stmt};

const MODULES: u64 = 160;
const ROUNDS: u64 = 4;
const TYPES: [&str; 10] = [
    "u32",
    "u64",
    "i64",
    "f32",
    "String",
    "Vec<u8>",
    "Option<Box<str>>",
    "HashMap<String, (u64, f32)>",
    "Vec<Option<String>>",
    "Result<u64, String>",
];
const OPS: [&str; 8] = ["+", "-", "*", "^", "|", "&", "<<", ">>"];

/// A random arithmetic expression over `vars`, `depth` levels deep at most.
fn expr(rng: &mut Rng, depth: u32, vars: &[&str], out: &mut String) {
    if depth == 0 || rng.chance(30) {
        match rng.below(4) {
            0 => write!(out, "{}", rng.below(1000)).unwrap(),
            1 => {
                write!(out, "{}.wrapping_add({})", vars[rng.below(vars.len() as u64) as usize], rng.below(64)).unwrap()
            }
            _ => out.push_str(vars[rng.below(vars.len() as u64) as usize]),
        }
        return;
    }
    match rng.below(5) {
        0 => {
            out.push_str("helper(");
            expr(rng, depth - 1, vars, out);
            out.push_str(", ");
            expr(rng, depth - 1, vars, out);
            out.push(')');
        }
        1 => {
            out.push_str("(if ");
            expr(rng, depth - 1, vars, out);
            out.push_str(" > 10 { ");
            expr(rng, depth - 1, vars, out);
            out.push_str(" } else { ");
            expr(rng, depth - 1, vars, out);
            out.push_str(" })");
        }
        _ => {
            out.push('(');
            expr(rng, depth - 1, vars, out);
            write!(out, " {} ", OPS[rng.below(OPS.len() as u64) as usize]).unwrap();
            expr(rng, depth - 1, vars, out);
            out.push(')');
        }
    }
}

fn function(rng: &mut Rng, name: &str, method: bool, out: &mut String) {
    let recv = if method { "&mut self, " } else { "" };
    writeln!(out, "    /// Computes something about `{name}`.\n    pub fn {name}({recv}x: u64, y: &str) -> Result<u64, String> {{").unwrap();
    out.push_str("        let mut acc: u64 = x.wrapping_mul(3) + 7;\n");
    for s in 0..rng.range(2, 9) {
        match rng.below(6) {
            0 => {
                write!(out, "        for i in 0..{} {{ if i % 2 == 0 {{ acc += ", rng.below(20) + 1).unwrap();
                expr(rng, 3, &["i", "acc", "x"], out);
                out.push_str("; } else { acc ^= (i << 3) as u64; } }\n");
            }
            1 => {
                out.push_str("        match y.len() { 0 => return Err(\"empty\".to_string()), 1..=4 => acc += 1, n => { acc = acc.rotate_left(n as u32 % 7); } }\n");
            }
            2 => {
                write!(out, "        let v{s}: Vec<u64> = (0..acc % 16).map(|z| ").unwrap();
                expr(rng, 2, &["z", "acc"], out);
                out.push_str(").filter(|z| z % 3 != 0).collect();\n");
                writeln!(out, "        acc = acc.wrapping_add(v{s}.iter().sum::<u64>());").unwrap();
            }
            3 => {
                write!(
                    out,
                    "        let t{s} = format!(\"{{}}-{{}}-{s}\", y, acc);\n        acc += t{s}.len() as u64;\n"
                )
                .unwrap();
            }
            _ => {
                write!(out, "        let e{s} = ").unwrap();
                expr(rng, 5, &["acc", "x"], out);
                write!(out, ";\n        acc = acc.wrapping_add(e{s});\n").unwrap();
            }
        }
    }
    out.push_str("        Ok(acc)\n    }\n");
}

/// About 8 KiB of source a module.
fn source(modules: u64) -> String {
    let mut rng = Rng::new(77);
    let mut s = String::from("//! Generated.\n#![allow(dead_code)]\nuse std::collections::HashMap;\n\n");
    s.push_str("fn helper(a: u64, b: u64) -> u64 { a.rotate_left(3) ^ b }\n\n");
    for m in 0..modules {
        writeln!(s, "pub mod m{m} {{\n    use super::*;\n").unwrap();
        for i in 0..rng.range(1, 4) {
            writeln!(s, "    #[derive(Debug, Clone, Default)]\n    pub struct S{i} {{").unwrap();
            for f in 0..rng.range(2, 8) {
                writeln!(s, "        pub f{f}: {},", TYPES[rng.below(TYPES.len() as u64) as usize]).unwrap();
            }
            s.push_str("    }\n\n");
            writeln!(s, "    pub enum E{i} {{ A, B(u32, String), C {{ x: i64, y: Vec<u8> }}, D(Box<E{i}>) }}\n")
                .unwrap();
            writeln!(s, "    impl S{i} {{").unwrap();
            for f in 0..rng.range(1, 4) {
                function(&mut rng, &format!("method{f}"), true, &mut s);
            }
            s.push_str("    }\n\n");
        }
        for f in 0..rng.range(1, 4) {
            function(&mut rng, &format!("free{f}"), false, &mut s);
        }
        s.push_str("}\n\n");
    }
    s
}

/// Counts items, statements and expression nodes.
#[derive(Default)]
struct Counts {
    items: u64,
    stmts: u64,
    exprs: u64,
}

impl Counts {
    fn item(&mut self, item: &Item) {
        self.items += 1;
        match item {
            Item::Mod(m) => m.content.iter().flat_map(|(_, items)| items).for_each(|i| self.item(i)),
            Item::Fn(f) => self.block(&f.block),
            Item::Impl(i) => {
                for it in &i.items {
                    if let syn::ImplItem::Fn(f) = it {
                        self.block(&f.block);
                    }
                }
            }
            Item::Struct(s) => self.items += s.fields.len() as u64,
            Item::Enum(e) => self.items += e.variants.len() as u64,
            _ => {}
        }
    }

    fn block(&mut self, b: &Block) {
        for stmt in &b.stmts {
            self.stmts += 1;
            match stmt {
                Stmt::Local(l) => {
                    if let Some(init) = &l.init {
                        self.expr(&init.expr);
                    }
                }
                Stmt::Expr(e, _) => self.expr(e),
                _ => {}
            }
        }
    }

    fn expr(&mut self, e: &Expr) {
        self.exprs += 1;
        match e {
            Expr::Binary(b) => {
                self.expr(&b.left);
                self.expr(&b.right);
            }
            Expr::Paren(p) => self.expr(&p.expr),
            Expr::Call(c) => c.args.iter().for_each(|a| self.expr(a)),
            Expr::MethodCall(m) => {
                self.expr(&m.receiver);
                m.args.iter().for_each(|a| self.expr(a));
            }
            Expr::If(i) => {
                self.expr(&i.cond);
                self.block(&i.then_branch);
                if let Some((_, e)) = &i.else_branch {
                    self.expr(e);
                }
            }
            Expr::Block(b) => self.block(&b.block),
            Expr::ForLoop(f) => self.block(&f.body),
            Expr::Closure(c) => self.expr(&c.body),
            Expr::Match(m) => m.arms.iter().for_each(|a| self.expr(&a.body)),
            Expr::Assign(a) => self.expr(&a.right),
            _ => {}
        }
    }
}

fn main() {
    let args = Args::parse();
    let started = bench_programs::start();
    let src = source(args.scaled(MODULES, 2));
    let mut checksum = src.len() as u64;
    for round in 0..ROUNDS {
        let file = syn::parse_file(&src).expect("the generated source parses");
        let mut counts = Counts::default();
        file.items.iter().for_each(|i| counts.item(i));
        checksum = checksum.wrapping_mul(31).wrapping_add(counts.items ^ counts.stmts << 20 ^ counts.exprs << 40);
        if round == 0 {
            eprintln!(
                "{} bytes of source: {} items, {} statements, {} expressions",
                src.len(),
                counts.items,
                counts.stmts,
                counts.exprs
            );
        }
    }
    bench_programs::finish("syn_parse", checksum, started);
}
