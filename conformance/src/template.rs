//! Templates: the text after a send or expect operator in a case file, before it is expanded.
//!
//! A template is parsed once when the case file is loaded (so syntax errors are reported with their
//! line before anything connects) and expanded at run time against an [`Env`], which knows the run's
//! unique account names and the values captured so far. The same syntax serves sends, which expand to
//! bytes, and patterns, which expand to [`PatTok`]s for the matcher in [`crate::pattern`]:
//!
//! - `$x` a per-run unique account name; `$x:upper`, `$x:lower` the same name in one letter case;
//!   `$x:max` a different unique name padded to exactly 32 characters; `$x[1..3]` the comma-separated
//!   list of the names `$x1,$x2,$x3`; `$pw` a valid password.
//! - `{id}` a captured number (in a pattern an unbound capture matches a decimal and binds it,
//!   a bound one must repeat it); `{id+1}`, `{id-1}` the captured number plus or minus a constant;
//!   `{t:time}` and `{w:word}` capture a timestamp or a word instead of a number.
//! - `{N*body}` the body repeated N times (bodies nest).
//! - escapes `\r \n \t \0 \s` (space) `\xHH` and `\\ \$ \{ \} \<` for the literal characters.
//! - in patterns only: `<id>` a message id (a decimal from 1), `<n>` a decimal number (both without
//!   leading zeros, as the server writes numbers), `<time>` a timestamp
//!   `YYYY-MM-DDTHH:MM:SS.mmmZ`, `<word>` one or more non-space characters, `<text>` one or more of
//!   any characters, `<any>` zero or more of any characters.

use std::collections::HashMap;
use std::fmt;

/// Longest variable name: keeps every generated account name within the 32-character name limit.
pub const MAX_VAR_LEN: usize = 16;
/// Length a `:max` name is padded to: the protocol's longest account name.
pub const MAX_NAME_LEN: usize = 32;
/// Largest repetition count, so a typo cannot ask for gigabytes.
const MAX_REPEAT: usize = 1 << 20;

/// Whether `<...>` matchers are allowed (patterns) or literal (sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes to send: `<` is an ordinary character.
    Send,
    /// A pattern to match a received line against.
    Pattern,
}

/// Letter-case and length variants of a generated account name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameForm {
    /// As generated (mixed case).
    AsIs,
    /// All upper case.
    Upper,
    /// All lower case.
    Lower,
    /// A distinct name padded to exactly [`MAX_NAME_LEN`] characters.
    Max,
}

/// Matchers that accept a range of values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matcher {
    /// `<n>`: a decimal number that fits a u64, without leading zeros.
    Number,
    /// `<id>`: like `<n>` but not 0.
    Id,
    /// `<time>`: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    Time,
    /// `<word>`: one or more bytes other than space.
    Word,
    /// `<text>`: one or more bytes of anything.
    Text,
    /// `<any>`: zero or more bytes of anything.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(Vec<u8>),
    Var(String, NameForm),
    VarList(String, u64, u64),
    Password,
    Capture(String, i64, Matcher),
    Repeat(usize, Vec<Seg>),
    Match(Matcher),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
    source: String,
}

/// A token of an expanded pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatTok {
    /// Exactly these bytes.
    Lit(Vec<u8>),
    /// One of the range matchers.
    Match(Matcher),
    /// A value to bind to this capture name, of the kind the matcher accepts.
    Bind(String, Matcher),
}

/// A template syntax error, with the byte offset in the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset of the problem in the template text.
    pub at: usize,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.at + 1, self.msg)
    }
}

/// An expansion failed at run time (a capture used before it was bound, arithmetic out of range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError(pub String);

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a template expands against: the run's unique names and the captures of the running case.
#[derive(Debug, Clone)]
pub struct Env {
    /// Prefix shared by every account name of one case in one run: a letter, the run id, the case
    /// index. Unique per run and case, so cases never see each other's accounts.
    pub name_prefix: String,
    /// The password `$pw` expands to.
    pub password: String,
    /// Values bound so far (`{id}`), plus the repetition index `i` while a step repeats.
    pub captures: HashMap<String, String>,
    /// The server's admin account (`--admin`), which `$admin` names.
    pub admin: Option<String>,
}

impl Env {
    /// An environment for one case of one run.
    pub fn new(run_id: &str, case_index: usize) -> Env {
        Env {
            name_prefix: format!("C{run_id}{}_", name_digits(case_index as u64, 2)),
            password: format!("pw-{run_id}-ok"),
            captures: HashMap::new(),
            admin: None,
        }
    }

    /// The account name a variable stands for, in the requested form.
    pub fn name(&self, var: &str, form: NameForm) -> String {
        if let (Some(admin), "admin", NameForm::AsIs) = (&self.admin, var, form) {
            return admin.clone();
        }
        let name = format!("{}{var}", self.name_prefix);
        match form {
            NameForm::AsIs => name,
            NameForm::Upper => name.to_ascii_uppercase(),
            NameForm::Lower => name.to_ascii_lowercase(),
            NameForm::Max => {
                let mut n = format!("{name}_");
                while n.len() < MAX_NAME_LEN {
                    n.push('x');
                }
                n
            }
        }
    }
}

/// The digits of [`name_digits`]: digits and lower-case letters that do not look like one another,
/// so that two different numbers never give names a server takes for the same (spec 4.1: `i`, `l`
/// and `1` look alike, so do `o` and `0`; `r` and `v` are left out so that `rn` and `vv`, which
/// look like `m` and `w`, cannot form).
pub const NAME_DIGITS: &[u8] = b"23456789abcdefghjkmnpqstuwxyz";

/// `n` written with [`NAME_DIGITS`], padded to at least `width` digits.
pub fn name_digits(mut n: u64, width: usize) -> String {
    let base = NAME_DIGITS.len() as u64;
    let mut out = Vec::new();
    while n > 0 {
        out.push(NAME_DIGITS[(n % base) as usize]);
        n /= base;
    }
    while out.len() < width {
        out.push(NAME_DIGITS[0]);
    }
    out.reverse();
    String::from_utf8(out).expect("name digits are ASCII")
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_lowercase()
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    mode: Mode,
}

impl Parser<'_> {
    fn err<T>(&self, at: usize, msg: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            at,
            msg: msg.into(),
        })
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.pos;
        if self.pos < self.s.len() && is_ident_start(self.s[self.pos]) {
            self.pos += 1;
            while self.pos < self.s.len() && is_ident(self.s[self.pos]) {
                self.pos += 1;
            }
            Some(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
        } else {
            None
        }
    }

    fn number(&mut self) -> Option<u64> {
        let start = self.pos;
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
            self.pos += 1;
        }
        std::str::from_utf8(&self.s[start..self.pos])
            .ok()?
            .parse()
            .ok()
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    /// Parses segments up to the end, or up to an unescaped `}` when `nested`.
    fn segs(&mut self, nested: bool) -> Result<Vec<Seg>, SyntaxError> {
        let mut segs = Vec::new();
        let mut lit = Vec::new();
        let flush = |lit: &mut Vec<u8>, segs: &mut Vec<Seg>| {
            if !lit.is_empty() {
                segs.push(Seg::Lit(std::mem::take(lit)));
            }
        };
        while self.pos < self.s.len() {
            let start = self.pos;
            match self.s[self.pos] {
                b'\\' => {
                    self.pos += 1;
                    let Some(&c) = self.s.get(self.pos) else {
                        return self
                            .err(start, "a backslash at the end of the line escapes nothing");
                    };
                    self.pos += 1;
                    match c {
                        b'r' => lit.push(b'\r'),
                        b'n' => lit.push(b'\n'),
                        b't' => lit.push(b'\t'),
                        b'0' => lit.push(0),
                        b's' => lit.push(b' '),
                        b'\\' | b'$' | b'{' | b'}' | b'<' | b'>' => lit.push(c),
                        b'x' => {
                            let hex = self.s.get(self.pos..self.pos + 2);
                            let byte = hex
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u8::from_str_radix(h, 16).ok());
                            let Some(byte) = byte else {
                                return self.err(start, "\\x needs two hex digits");
                            };
                            self.pos += 2;
                            lit.push(byte);
                        }
                        _ => return self.err(start, format!("unknown escape \\{}", c as char)),
                    }
                }
                b'$' => {
                    self.pos += 1;
                    let Some(var) = self.ident() else {
                        return self
                            .err(start, "`$` must be followed by a variable name (a-z, 0-9)");
                    };
                    if var.len() > MAX_VAR_LEN {
                        return self.err(
                            start,
                            format!("variable names are at most {MAX_VAR_LEN} characters"),
                        );
                    }
                    flush(&mut lit, &mut segs);
                    if var == "pw" {
                        segs.push(Seg::Password);
                    } else if self.eat(":upper") {
                        segs.push(Seg::Var(var, NameForm::Upper));
                    } else if self.eat(":lower") {
                        segs.push(Seg::Var(var, NameForm::Lower));
                    } else if self.eat(":max") {
                        segs.push(Seg::Var(var, NameForm::Max));
                    } else if self.s.get(self.pos) == Some(&b'[') {
                        self.pos += 1;
                        let from = self.number();
                        let dots = self.eat("..");
                        let to = self.number();
                        let close = self.eat("]");
                        match (from, dots, to, close) {
                            (Some(from), true, Some(to), true)
                                if from <= to && to - from < 1000 =>
                            {
                                segs.push(Seg::VarList(var, from, to))
                            }
                            _ => return self.err(start, "a name list is written $x[FROM..TO]"),
                        }
                    } else {
                        segs.push(Seg::Var(var, NameForm::AsIs));
                    }
                }
                b'{' => {
                    self.pos += 1;
                    flush(&mut lit, &mut segs);
                    if let Some(n) = self.number() {
                        if !self.eat("*") {
                            return self.err(start, "a repetition is written {N*text}");
                        }
                        if n as usize > MAX_REPEAT {
                            return self.err(start, format!("repetition over {MAX_REPEAT}"));
                        }
                        let body = self.segs(true)?;
                        if !self.eat("}") {
                            return self.err(start, "unclosed repetition {N*...}");
                        }
                        segs.push(Seg::Repeat(n as usize, body));
                    } else if let Some(name) = self.ident() {
                        let kind = if self.eat(":time") {
                            Some(Matcher::Time)
                        } else if self.eat(":word") {
                            Some(Matcher::Word)
                        } else {
                            None
                        };
                        let offset = if kind.is_some() {
                            Some(0)
                        } else if self.eat("+") {
                            self.number().map(|n| n as i64)
                        } else if self.eat("-") {
                            self.number().map(|n| -(n as i64))
                        } else {
                            Some(0)
                        };
                        let (Some(offset), true) = (offset, self.eat("}")) else {
                            return self.err(
                                start,
                                "a capture is written {name}, {name+K}, {name-K}, {name:time} or {name:word}",
                            );
                        };
                        segs.push(Seg::Capture(name, offset, kind.unwrap_or(Matcher::Number)));
                    } else {
                        return self.err(
                            start,
                            "`{` starts a capture {name} or a repetition {N*text}",
                        );
                    }
                }
                b'}' if nested => break,
                b'}' => return self.err(start, "unmatched `}` (write \\} for a literal brace)"),
                b'<' if self.mode == Mode::Pattern => {
                    let matchers = [
                        ("<id>", Matcher::Id),
                        ("<n>", Matcher::Number),
                        ("<time>", Matcher::Time),
                        ("<word>", Matcher::Word),
                        ("<text>", Matcher::Text),
                        ("<any>", Matcher::Any),
                    ];
                    let Some((tag, m)) = matchers
                        .iter()
                        .find(|(tag, _)| self.s[self.pos..].starts_with(tag.as_bytes()))
                    else {
                        return self.err(start, "unknown matcher: use <id>, <n>, <time>, <word>, <text>, <any>, or \\< for a literal <");
                    };
                    self.pos += tag.len();
                    flush(&mut lit, &mut segs);
                    segs.push(Seg::Match(*m));
                }
                c => {
                    self.pos += 1;
                    lit.push(c);
                }
            }
        }
        flush(&mut lit, &mut segs);
        Ok(segs)
    }
}

impl Template {
    /// Parses template text in the given mode.
    pub fn parse(text: &str, mode: Mode) -> Result<Template, SyntaxError> {
        let mut p = Parser {
            s: text.as_bytes(),
            pos: 0,
            mode,
        };
        let segs = p.segs(false)?;
        Ok(Template {
            segs,
            source: text.to_string(),
        })
    }

    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Expands a send template to bytes.
    pub fn to_bytes(&self, env: &Env) -> Result<Vec<u8>, ExpandError> {
        let mut out = Vec::new();
        expand_bytes(&self.segs, env, &mut out)?;
        Ok(out)
    }

    /// Expands a pattern template to tokens; bound captures become literals.
    pub fn to_pattern(&self, env: &Env) -> Result<Vec<PatTok>, ExpandError> {
        let mut out = Vec::new();
        expand_pattern(&self.segs, env, &mut out)?;
        Ok(out)
    }

    /// The literal words of the template, every variable part counting as a word break and every
    /// repetition body taken once: what coverage checks read (the command a send starts with, the
    /// reply code an expectation names).
    pub fn literal_words(&self) -> Vec<String> {
        fn walk(segs: &[Seg], text: &mut Vec<u8>) {
            for seg in segs {
                match seg {
                    Seg::Lit(b) => text.extend_from_slice(b),
                    Seg::Repeat(_, body) => walk(body, text),
                    _ => text.push(b' '),
                }
            }
        }
        let mut text = Vec::new();
        walk(&self.segs, &mut text);
        String::from_utf8_lossy(&text)
            .split_ascii_whitespace()
            .map(str::to_string)
            .collect()
    }
}

fn capture_value(env: &Env, name: &str, offset: i64) -> Result<Option<String>, ExpandError> {
    match env.captures.get(name) {
        None if offset != 0 => Err(ExpandError(format!(
            "capture {{{name}}} is used with an offset before it was bound"
        ))),
        None => Ok(None),
        Some(v) if offset == 0 => Ok(Some(v.clone())),
        Some(v) => {
            let n: u64 = v
                .parse()
                .map_err(|_| ExpandError(format!("{{{name}}} = {v:?} is not a number")))?;
            let r = (n as i128) + offset as i128;
            u64::try_from(r)
                .map(|v| Some(v.to_string()))
                .map_err(|_| ExpandError(format!("{{{name}{offset:+}}} is out of range")))
        }
    }
}

fn expand_bytes(segs: &[Seg], env: &Env, out: &mut Vec<u8>) -> Result<(), ExpandError> {
    for seg in segs {
        match seg {
            Seg::Lit(b) => out.extend_from_slice(b),
            Seg::Var(v, form) => out.extend_from_slice(env.name(v, *form).as_bytes()),
            Seg::VarList(v, from, to) => {
                let names: Vec<String> = (*from..=*to)
                    .map(|k| env.name(&format!("{v}{k}"), NameForm::AsIs))
                    .collect();
                out.extend_from_slice(names.join(",").as_bytes());
            }
            Seg::Password => out.extend_from_slice(env.password.as_bytes()),
            Seg::Capture(name, offset, _) => match capture_value(env, name, *offset)? {
                Some(v) => out.extend_from_slice(v.as_bytes()),
                None => {
                    return Err(ExpandError(format!(
                        "capture {{{name}}} is sent before any expectation bound it"
                    )))
                }
            },
            Seg::Repeat(n, body) => {
                let mut once = Vec::new();
                expand_bytes(body, env, &mut once)?;
                for _ in 0..*n {
                    out.extend_from_slice(&once);
                }
            }
            Seg::Match(_) => unreachable!("matchers are only parsed in pattern mode"),
        }
    }
    Ok(())
}

fn push_lit(out: &mut Vec<PatTok>, bytes: &[u8]) {
    if let Some(PatTok::Lit(prev)) = out.last_mut() {
        prev.extend_from_slice(bytes);
    } else {
        out.push(PatTok::Lit(bytes.to_vec()));
    }
}

fn expand_pattern(segs: &[Seg], env: &Env, out: &mut Vec<PatTok>) -> Result<(), ExpandError> {
    for seg in segs {
        match seg {
            Seg::Match(m) => out.push(PatTok::Match(*m)),
            Seg::Capture(name, offset, kind) => match capture_value(env, name, *offset)? {
                Some(v) => push_lit(out, v.as_bytes()),
                None => out.push(PatTok::Bind(name.clone(), *kind)),
            },
            Seg::Repeat(n, body) => {
                for _ in 0..*n {
                    expand_pattern(body, env, out)?;
                }
            }
            other => {
                let mut bytes = Vec::new();
                expand_bytes(std::slice::from_ref(other), env, &mut bytes)?;
                push_lit(out, &bytes);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        let mut e = Env::new("abc123", 7);
        e.captures.insert("id".into(), "41".into());
        e
    }

    fn send(t: &str) -> Vec<u8> {
        Template::parse(t, Mode::Send)
            .unwrap()
            .to_bytes(&env())
            .unwrap()
    }

    #[test]
    fn names_are_unique_valid_and_bounded() {
        let e = env();
        assert_eq!(e.name("a", NameForm::AsIs), "Cabc12329_a");
        assert_eq!(e.name("a", NameForm::Upper), "CABC12329_A");
        assert_eq!(e.name("a", NameForm::Lower), "cabc12329_a");
        assert_eq!(e.name("a", NameForm::Max).len(), MAX_NAME_LEN);
        let longest = e.name(&"z".repeat(MAX_VAR_LEN), NameForm::AsIs);
        assert!(longest.len() <= MAX_NAME_LEN);
        assert_ne!(
            Env::new("abc123", 8).name("a", NameForm::AsIs),
            e.name("a", NameForm::AsIs)
        );
    }

    #[test]
    fn expands_variables_captures_and_escapes() {
        assert_eq!(send("MSG $b hi"), b"MSG Cabc12329_b hi");
        assert_eq!(
            send("LOGIN $a:lower $pw"),
            b"LOGIN cabc12329_a pw-abc123-ok"
        );
        assert_eq!(
            send("HISTORY $b 2 BEFORE {id}"),
            b"HISTORY Cabc12329_b 2 BEFORE 41"
        );
        assert_eq!(send("{id+1} {id-41}"), b"42 0");
        assert_eq!(send("caf\\xC3\\x28\\r\\n"), b"caf\xC3\x28\r\n");
        assert_eq!(send("\\$a \\{x\\} a\\sb"), b"$a {x} a b");
        assert_eq!(send("<id> stays"), b"<id> stays");
        assert_eq!(
            send("GROUP $r[1..3] x"),
            b"GROUP Cabc12329_r1,Cabc12329_r2,Cabc12329_r3 x"
        );
    }

    #[test]
    fn repetition_nests() {
        assert_eq!(send("{3*ab}"), b"ababab");
        assert_eq!(send("{2*P {3*x}\\n}"), b"P xxx\nP xxx\n");
        assert_eq!(send("{4092* }PING").len(), 4096);
    }

    #[test]
    fn syntax_errors_are_reported() {
        for bad in [
            "$", "$A", "{", "{3x}", "{id", "\\q", "\\x4", "a}", "{3*x", "$r[2..1]", "{id+}",
        ] {
            assert!(
                Template::parse(bad, Mode::Send).is_err(),
                "{bad:?} should not parse"
            );
        }
        assert!(Template::parse("<idx>", Mode::Pattern).is_err());
        assert!(Template::parse(&format!("${}", "v".repeat(MAX_VAR_LEN + 1)), Mode::Send).is_err());
    }

    #[test]
    fn unbound_capture_cannot_be_sent() {
        let t = Template::parse("x {nope}", Mode::Send).unwrap();
        assert!(t.to_bytes(&env()).is_err());
        let t = Template::parse("x {nope+1}", Mode::Pattern).unwrap();
        assert!(t.to_pattern(&env()).is_err());
    }

    #[test]
    fn patterns_expand_to_tokens() {
        let t = Template::parse("OK MSG {id} <word> {new} $a<text>", Mode::Pattern).unwrap();
        assert_eq!(
            t.to_pattern(&env()).unwrap(),
            vec![
                PatTok::Lit(b"OK MSG 41 ".to_vec()),
                PatTok::Match(Matcher::Word),
                PatTok::Lit(b" ".to_vec()),
                PatTok::Bind("new".into(), Matcher::Number),
                PatTok::Lit(b" Cabc12329_a".to_vec()),
                PatTok::Match(Matcher::Text),
            ]
        );
    }

    #[test]
    fn literal_words_skip_variable_parts() {
        let t = Template::parse("FAIL @x MSG UNKNOWN_USER <text>", Mode::Pattern).unwrap();
        assert_eq!(t.literal_words(), ["FAIL", "@x", "MSG", "UNKNOWN_USER"]);
        let t = Template::parse("{60*HISTORY $a 500\\n}", Mode::Send).unwrap();
        assert_eq!(t.literal_words(), ["HISTORY", "500"]);
    }
}
