//! A pickle reader that executes nothing.
//!
//! Python's pickle is a small stack machine: opcodes push values, build
//! containers from the values above a MARK, store and fetch values in a memo,
//! and (the dangerous part) `REDUCE` calls any importable function. This
//! reader runs the same machine over plain data: every object lives in an
//! arena ([`Pickle::objects`]) and the stack and memo hold indices into it,
//! so a memoised dict that is filled in later (`EMPTY_DICT BINPUT ... SETITEMS`)
//! is the same object wherever it is fetched, exactly as in Python, and
//! fetching a value twice never copies it. Memory use is therefore linear in
//! the input's length, whatever the pickle says.
//!
//! `GLOBAL` resolves a name through `globals::resolve` (anything off
//! the allowlist is an error), and `REDUCE` on an allowed function only
//! records the call ([`Object::Call`]); `rebuild` interprets it.
//! Opcodes a `torch.save` pickle never uses are rejected by name.

use std::collections::HashMap;

use super::checkpoint_error;
use super::globals::{self, Global};
use crate::error::Result;

/// Index of an object in [`Pickle::objects`].
pub type ObjId = usize;

/// A value the unpickler can build. Containers refer to their items by id.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    None,
    Bool(bool),
    /// Python ints; i128 holds everything a checkpoint contains, including
    /// the legacy format's 80-bit magic number.
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<ObjId>),
    List(Vec<ObjId>),
    /// Dicts and OrderedDicts, in insertion order.
    Dict(Vec<(ObjId, ObjId)>),
    /// A reference to an allowed global (not yet applied to anything).
    Global(Global),
    /// What `persistent_load` would be given: torch stores tensor data
    /// outside the pickle and refers to it this way.
    PersistentId(ObjId),
    /// `func(*args)` recorded, not run; `state` is what `BUILD` supplied.
    Call {
        func: Global,
        args: ObjId,
        state: Option<ObjId>,
    },
}

/// The result of unpickling: the arena and the value `STOP` returned.
#[derive(Debug)]
pub struct Pickle {
    pub objects: Vec<Object>,
    pub root: ObjId,
}

impl Pickle {
    pub fn get(&self, id: ObjId) -> &Object {
        // Ids are only ever created by `Machine::push_new`, which returns the
        // index it just pushed, so this cannot be out of range.
        &self.objects[id]
    }

    /// A short description of an object for error messages.
    pub fn describe(&self, id: ObjId) -> String {
        match self.get(id) {
            Object::None => "None".into(),
            Object::Bool(b) => format!("bool {b}"),
            Object::Int(i) => format!("int {i}"),
            Object::Float(f) => format!("float {f}"),
            Object::Str(s) => format!("str {s:?}"),
            Object::Bytes(b) => format!("bytes of length {}", b.len()),
            Object::Tuple(t) => format!("tuple of {}", t.len()),
            Object::List(l) => format!("list of {}", l.len()),
            Object::Dict(d) => format!("dict of {}", d.len()),
            Object::Global(g) => format!("global {g:?}"),
            Object::PersistentId(_) => "persistent id".into(),
            Object::Call { func, .. } => format!("{func:?}(...)"),
        }
    }
}

/// Unpickles one pickle from the start of `bytes`. Returns the result and
/// the number of bytes it used (the legacy format stores several pickles
/// back to back, followed by raw data).
pub fn unpickle(bytes: &[u8]) -> Result<(Pickle, usize)> {
    let mut machine = Machine {
        input: Reader { bytes, pos: 0 },
        objects: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = machine.run()?;
    let used = machine.input.pos;
    Ok((
        Pickle {
            objects: machine.objects,
            root,
        },
        used,
    ))
}

/// A cursor over the input that never reads past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(checkpoint_error(format!(
                "pickle truncated: {what} needs {n} bytes at offset {}, only {} left",
                self.pos,
                self.bytes.len() - self.pos
            )));
        };
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A length read from the file, as usize (the take that follows checks
    /// it against the bytes really present).
    fn len_u64(&mut self, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        usize::try_from(n).map_err(|_| checkpoint_error(format!("{what}: length {n} too large")))
    }
    /// A text line ending in `\n` (the `GLOBAL` opcode's operands).
    fn line(&mut self, what: &str) -> Result<&'a str> {
        let rest = &self.bytes[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(checkpoint_error(format!(
                "pickle truncated: {what} has no end of line"
            )));
        };
        let line = self.take(n + 1, what)?;
        std::str::from_utf8(&line[..n])
            .map_err(|_| checkpoint_error(format!("{what} is not valid UTF-8")))
    }
}

struct Machine<'a> {
    input: Reader<'a>,
    objects: Vec<Object>,
    stack: Vec<ObjId>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, ObjId>,
}

// Opcode bytes, named as in CPython's Lib/pickle.py.
const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINFLOAT: u8 = b'G';
const PROTO: u8 = 0x80;
const NEWOBJ: u8 = 0x81;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;

/// Names of the opcodes this reader refuses, for the error message.
fn unsupported_opcode_name(op: u8) -> &'static str {
    match op {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'P' => "PERSID",
        b'g' => "GET",
        b'p' => "PUT",
        b'i' => "INST",
        b'o' => "OBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown opcode",
    }
}

impl Machine<'_> {
    fn push_new(&mut self, object: Object) -> ObjId {
        self.objects.push(object);
        let id = self.objects.len() - 1;
        self.stack.push(id);
        id
    }

    fn pop(&mut self, op: &str) -> Result<ObjId> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(checkpoint_error(format!("pickle {op}: stack underflow")));
        }
        self.stack
            .pop()
            .ok_or_else(|| checkpoint_error(format!("pickle {op}: stack underflow")))
    }

    fn top(&self, op: &str) -> Result<ObjId> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| checkpoint_error(format!("pickle {op}: empty stack")))
    }

    /// Removes and returns everything above the most recent MARK.
    fn pop_mark(&mut self, op: &str) -> Result<Vec<ObjId>> {
        let Some(height) = self.marks.pop() else {
            return Err(checkpoint_error(format!("pickle {op} without a MARK")));
        };
        Ok(self.stack.split_off(height))
    }

    fn put(&mut self, index: u32) -> Result<()> {
        let top = self.top("PUT")?;
        self.memo.insert(index, top);
        Ok(())
    }

    fn get(&mut self, index: u32) -> Result<()> {
        let id = *self
            .memo
            .get(&index)
            .ok_or_else(|| checkpoint_error(format!("pickle GET of unset memo slot {index}")))?;
        self.stack.push(id);
        Ok(())
    }

    fn utf8(bytes: &[u8], op: &str) -> Result<String> {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| checkpoint_error(format!("pickle {op}: string is not valid UTF-8")))
    }

    fn str_at(&self, id: ObjId, op: &str) -> Result<String> {
        match &self.objects[id] {
            Object::Str(s) => Ok(s.clone()),
            _ => Err(checkpoint_error(format!(
                "pickle {op}: expected a str operand"
            ))),
        }
    }

    /// Adds key/value pairs to the dict `target`.
    fn set_items(&mut self, target: ObjId, items: Vec<ObjId>, op: &str) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(checkpoint_error(format!(
                "pickle {op}: odd number of items for a dict"
            )));
        }
        let Object::Dict(entries) = &mut self.objects[target] else {
            return Err(checkpoint_error(format!(
                "pickle {op}: target is not a dict"
            )));
        };
        entries.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
        Ok(())
    }

    fn append_items(&mut self, target: ObjId, items: Vec<ObjId>, op: &str) -> Result<()> {
        let Object::List(list) = &mut self.objects[target] else {
            return Err(checkpoint_error(format!(
                "pickle {op}: target is not a list"
            )));
        };
        list.extend(items);
        Ok(())
    }

    /// `REDUCE` / `NEWOBJ`: a call recorded as data. Only an empty
    /// `OrderedDict()` is evaluated, since later opcodes fill it in.
    fn call(&mut self, op: &str) -> Result<()> {
        let args = self.pop(op)?;
        let callable = self.pop(op)?;
        let Object::Global(func) = self.objects[callable] else {
            return Err(checkpoint_error(format!(
                "pickle {op}: can only apply an allowed global, got {}",
                describe(&self.objects[callable])
            )));
        };
        let result = match func {
            Global::OrderedDict => match &self.objects[args] {
                Object::Tuple(a) if a.is_empty() => Object::Dict(Vec::new()),
                _ => {
                    return Err(checkpoint_error(format!(
                        "pickle {op}: OrderedDict called with arguments; only OrderedDict() is supported"
                    )))
                }
            },
            Global::Storage(dtype) => {
                return Err(checkpoint_error(format!(
                    "pickle {op}: a {} storage may only appear inside a persistent id",
                    dtype.torch_name()
                )))
            }
            _ => Object::Call {
                func,
                args,
                state: None,
            },
        };
        self.push_new(result);
        Ok(())
    }

    /// `BUILD`: sets an object's state. An OrderedDict's state (e.g. the
    /// `_metadata` attribute of `state_dict()`) holds no tensors and is
    /// dropped; a recorded call keeps it.
    fn build(&mut self) -> Result<()> {
        let state = self.pop("BUILD")?;
        let target = self.top("BUILD")?;
        match &mut self.objects[target] {
            Object::Dict(_) => Ok(()),
            Object::Call { state: slot, .. } => {
                *slot = Some(state);
                Ok(())
            }
            other => Err(checkpoint_error(format!(
                "pickle BUILD on {}, which takes no state",
                describe(other)
            ))),
        }
    }

    fn run(&mut self) -> Result<ObjId> {
        loop {
            let op = self.input.u8("opcode")?;
            match op {
                PROTO => {
                    let version = self.input.u8("PROTO")?;
                    if version > 5 {
                        return Err(checkpoint_error(format!(
                            "pickle protocol {version} is newer than any Python writes"
                        )));
                    }
                }
                // Framing only groups opcodes for buffered reads; the
                // contents are ordinary opcodes.
                FRAME => {
                    self.input.u64("FRAME")?;
                }
                STOP => return self.pop("STOP"),
                MARK => self.marks.push(self.stack.len()),
                POP => {
                    self.pop("POP")?;
                }
                POP_MARK => {
                    self.pop_mark("POP_MARK")?;
                }
                DUP => {
                    let top = self.top("DUP")?;
                    self.stack.push(top);
                }
                NONE => {
                    self.push_new(Object::None);
                }
                NEWTRUE => {
                    self.push_new(Object::Bool(true));
                }
                NEWFALSE => {
                    self.push_new(Object::Bool(false));
                }
                BININT => {
                    let v = i32::from_le_bytes(self.input.array("BININT")?);
                    self.push_new(Object::Int(v.into()));
                }
                BININT1 => {
                    let v = self.input.u8("BININT1")?;
                    self.push_new(Object::Int(v.into()));
                }
                BININT2 => {
                    let v = self.input.u16("BININT2")?;
                    self.push_new(Object::Int(v.into()));
                }
                LONG1 | LONG4 => {
                    let n = if op == LONG1 {
                        self.input.u8("LONG1")? as usize
                    } else {
                        self.input.u32("LONG4")? as usize
                    };
                    let digits = self.input.take(n, "LONG")?;
                    self.push_new(Object::Int(long_from_le_twos_complement(digits)?));
                }
                BINFLOAT => {
                    let v = f64::from_be_bytes(self.input.array("BINFLOAT")?);
                    self.push_new(Object::Float(v));
                }
                BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 | BINSTRING | SHORT_BINSTRING => {
                    let n = match op {
                        SHORT_BINUNICODE | SHORT_BINSTRING => self.input.u8("string")? as usize,
                        BINUNICODE8 => self.input.len_u64("BINUNICODE8")?,
                        _ => self.input.u32("string")? as usize,
                    };
                    // Python 2 `str` (BINSTRING) is decoded as UTF-8, as
                    // torch.load's default encoding does.
                    let text = Self::utf8(self.input.take(n, "string")?, "string")?;
                    self.push_new(Object::Str(text));
                }
                BINBYTES | SHORT_BINBYTES | BINBYTES8 => {
                    let n = match op {
                        SHORT_BINBYTES => self.input.u8("SHORT_BINBYTES")? as usize,
                        BINBYTES8 => self.input.len_u64("BINBYTES8")?,
                        _ => self.input.u32("BINBYTES")? as usize,
                    };
                    let data = self.input.take(n, "bytes")?.to_vec();
                    self.push_new(Object::Bytes(data));
                }
                EMPTY_TUPLE => {
                    self.push_new(Object::Tuple(Vec::new()));
                }
                TUPLE => {
                    let items = self.pop_mark("TUPLE")?;
                    self.push_new(Object::Tuple(items));
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = usize::from(op - TUPLE1 + 1);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop("TUPLEn")?);
                    }
                    items.reverse();
                    self.push_new(Object::Tuple(items));
                }
                EMPTY_LIST => {
                    self.push_new(Object::List(Vec::new()));
                }
                LIST => {
                    let items = self.pop_mark("LIST")?;
                    self.push_new(Object::List(items));
                }
                APPEND => {
                    let item = self.pop("APPEND")?;
                    let list = self.top("APPEND")?;
                    self.append_items(list, vec![item], "APPEND")?;
                }
                APPENDS => {
                    let items = self.pop_mark("APPENDS")?;
                    let list = self.top("APPENDS")?;
                    self.append_items(list, items, "APPENDS")?;
                }
                EMPTY_DICT => {
                    self.push_new(Object::Dict(Vec::new()));
                }
                DICT => {
                    let items = self.pop_mark("DICT")?;
                    let dict = self.push_new(Object::Dict(Vec::new()));
                    self.set_items(dict, items, "DICT")?;
                }
                SETITEM => {
                    let value = self.pop("SETITEM")?;
                    let key = self.pop("SETITEM")?;
                    let dict = self.top("SETITEM")?;
                    self.set_items(dict, vec![key, value], "SETITEM")?;
                }
                SETITEMS => {
                    let items = self.pop_mark("SETITEMS")?;
                    let dict = self.top("SETITEMS")?;
                    self.set_items(dict, items, "SETITEMS")?;
                }
                GLOBAL => {
                    let module = self.input.line("GLOBAL module")?;
                    let name = self.input.line("GLOBAL name")?;
                    let global = globals::resolve(module, name)?;
                    self.push_new(Object::Global(global));
                }
                STACK_GLOBAL => {
                    let name = self.pop("STACK_GLOBAL")?;
                    let module = self.pop("STACK_GLOBAL")?;
                    let (module, name) = (
                        self.str_at(module, "STACK_GLOBAL")?,
                        self.str_at(name, "STACK_GLOBAL")?,
                    );
                    let global = globals::resolve(&module, &name)?;
                    self.push_new(Object::Global(global));
                }
                REDUCE => self.call("REDUCE")?,
                NEWOBJ => self.call("NEWOBJ")?,
                BUILD => self.build()?,
                BINPERSID => {
                    let pid = self.pop("BINPERSID")?;
                    self.push_new(Object::PersistentId(pid));
                }
                BINPUT => {
                    let i = self.input.u8("BINPUT")?;
                    self.put(i.into())?;
                }
                LONG_BINPUT => {
                    let i = self.input.u32("LONG_BINPUT")?;
                    self.put(i)?;
                }
                MEMOIZE => {
                    let i = u32::try_from(self.memo.len())
                        .map_err(|_| checkpoint_error("pickle memo overflow"))?;
                    self.put(i)?;
                }
                BINGET => {
                    let i = self.input.u8("BINGET")?;
                    self.get(i.into())?;
                }
                LONG_BINGET => {
                    let i = self.input.u32("LONG_BINGET")?;
                    self.get(i)?;
                }
                other => {
                    return Err(checkpoint_error(format!(
                        "pickle opcode {} (0x{other:02x}) at offset {} is not supported: \
                         torch.save never writes it",
                        unsupported_opcode_name(other),
                        self.input.pos - 1
                    )))
                }
            }
        }
    }
}

fn describe(object: &Object) -> String {
    match object {
        Object::Global(g) => format!("global {g:?}"),
        Object::Call { func, .. } => format!("the result of {func:?}"),
        Object::Dict(_) => "a dict".into(),
        Object::List(_) => "a list".into(),
        Object::Tuple(_) => "a tuple".into(),
        _ => "a plain value".into(),
    }
}

/// Decodes LONG1/LONG4's little-endian two's-complement integer.
fn long_from_le_twos_complement(digits: &[u8]) -> Result<i128> {
    if digits.len() > 16 {
        return Err(checkpoint_error(format!(
            "pickle LONG of {} bytes is larger than any value a checkpoint holds",
            digits.len()
        )));
    }
    let Some(&last) = digits.last() else {
        return Ok(0);
    };
    let fill = if last & 0x80 != 0 { 0xff } else { 0x00 };
    let mut full = [fill; 16];
    full[..digits.len()].copy_from_slice(digits);
    Ok(i128::from_le_bytes(full))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_ordered_dict_with_memo_and_setitems() {
        // pickle.dumps(OrderedDict(a=1, b=[2, 3]), protocol=2)
        let bytes = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aq\x02K\x01X\x01\x00\x00\x00bq\x03]q\x04(K\x02K\x03eu.";
        let (p, used) = unpickle(bytes).unwrap();
        assert_eq!(used, bytes.len());
        let Object::Dict(items) = p.get(p.root) else {
            panic!("not a dict: {:?}", p.get(p.root))
        };
        assert_eq!(items.len(), 2);
        assert_eq!(p.get(items[0].0), &Object::Str("a".into()));
        assert_eq!(p.get(items[0].1), &Object::Int(1));
        let Object::List(l) = p.get(items[1].1) else {
            panic!()
        };
        assert_eq!(
            l.iter().map(|&i| p.get(i).clone()).collect::<Vec<_>>(),
            vec![Object::Int(2), Object::Int(3)]
        );
    }

    #[test]
    fn memo_refers_to_the_same_object_after_mutation() {
        // d = {}; pickle.dumps([d, d]) after d is filled: EMPTY_DICT PUT, SETITEMS, then GET.
        let bytes = b"\x80\x02](}q\x00(K\x01K\x02uh\x00e.";
        let (p, _) = unpickle(bytes).unwrap();
        let Object::List(l) = p.get(p.root) else {
            panic!()
        };
        assert_eq!(l[0], l[1]);
        assert_eq!(p.get(l[1]), &Object::Dict(vec![(2, 3)]));
    }

    #[test]
    fn refuses_os_system() {
        let bytes = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.";
        let err = unpickle(bytes).unwrap_err().to_string();
        assert!(err.contains("os.system"), "{err}");
    }

    #[test]
    fn refuses_unknown_opcodes_by_name() {
        let err = unpickle(b"\x80\x02cbuiltins\nlist\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("builtins.list"), "{err}");
        let err = unpickle(b"(i__main__\nX\n.").unwrap_err().to_string();
        assert!(err.contains("INST"), "{err}");
    }

    #[test]
    fn decodes_the_legacy_magic_number() {
        let bytes = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        let (p, _) = unpickle(bytes).unwrap();
        assert_eq!(p.get(p.root), &Object::Int(0x1950a86a20f9469cfc6c));
        let (p, _) = unpickle(b"\x8a\x01\xff.").unwrap();
        assert_eq!(p.get(p.root), &Object::Int(-1));
    }

    #[test]
    fn truncation_and_underflow_are_errors() {
        assert!(unpickle(b"\x80\x02X\xff\x00\x00\x00ab").is_err());
        assert!(unpickle(b"\x80\x02.").is_err());
        assert!(unpickle(b"\x80\x02(K\x01u.").is_err());
        assert!(unpickle(b"\x80\x02h\x05.").is_err());
        assert!(unpickle(b"").is_err());
    }
}
