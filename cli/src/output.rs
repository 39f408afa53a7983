//! Human tables by default, JSON for scripts (`-o json`).

use std::io::Write;

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// A plain aligned table: headers, then rows, columns padded to their widest cell.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<const N: usize>(headers: [&str; N]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
        }
        let mut out = String::new();
        let line = |cells: &[String], out: &mut String| {
            let n = cells.len();
            for (i, c) in cells.iter().enumerate() {
                out.push_str(c);
                if i + 1 < n {
                    let pad =
                        widths.get(i).copied().unwrap_or(0) - c.chars().count().min(widths[i]);
                    out.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push('\n');
        };
        line(&self.headers, &mut out);
        for r in &self.rows {
            line(r, &mut out);
        }
        out
    }

    pub fn print(&self) -> std::io::Result<()> {
        std::io::stdout().write_all(self.render().as_bytes())
    }
}

/// Key/value pairs for `show` commands.
pub fn print_fields(fields: &[(&str, String)]) -> std::io::Result<()> {
    let w = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(&format!("{k:<w$}  {v}\n"));
    }
    std::io::stdout().write_all(out.as_bytes())
}

pub fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    std::io::stdout().write_all(s.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(["NAME", "FILES"]);
        t.row(vec!["imagenet".into(), "3".into()]);
        t.row(vec!["a".into(), "12345".into()]);
        assert_eq!(
            t.render(),
            "NAME      FILES\nimagenet  3\na         12345\n"
        );
    }
}
