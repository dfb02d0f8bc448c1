//! A bounded pull parser over quick-xml: owned, decoded events with hard
//! limits, plus small element trees for the parts of a response that are
//! read whole. Nothing here panics on hostile input; it returns an error.

use std::fmt;
use std::io::{self, BufRead};
use std::time::Duration;

use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::Reader;

use crate::error::OspError;

/// Deepest nesting accepted. Real OSP answers stay under 8 levels
/// (`get_vts_response/vts/vt/severities/severity/value`).
pub(crate) const MAX_DEPTH: usize = 32;
/// Largest single tag or text run. VT descriptions and result texts are
/// far below this; larger means a broken or hostile peer.
pub(crate) const MAX_TOKEN: usize = 8 * 1024 * 1024;
/// Most attributes accepted on one element (OSP uses at most ~10).
pub(crate) const MAX_ATTRS: usize = 64;

/// A start tag: its name and decoded attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tag {
    pub(crate) name: String,
    pub(crate) attrs: Vec<(String, String)>,
}

impl Tag {
    pub(crate) fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One decoded event.
#[derive(Debug)]
pub(crate) enum Ev {
    Start(Tag),
    End,
    Text(String),
    Eof,
}

/// One event in the cheap mode used to skip or count: only names decoded.
#[derive(Debug)]
pub(crate) enum Shallow {
    Start(String),
    End,
    Other,
    Eof,
    /// Internal: a start tag whose name is not UTF-8 (reported as error).
    BadName,
}

/// A small element tree, for the parts of a response read as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    pub(crate) tag: Tag,
    pub(crate) children: Vec<Element>,
    /// All character data directly inside this element, untrimmed.
    pub(crate) text: String,
}

impl Element {
    fn new(tag: Tag) -> Self {
        Element {
            tag,
            children: Vec::new(),
            text: String::new(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.tag.name
    }

    pub(crate) fn attr(&self, key: &str) -> Option<&str> {
        self.tag.attr(key)
    }

    pub(crate) fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name() == name)
    }

    pub(crate) fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name() == name)
    }

    /// This element's text with surrounding whitespace removed.
    pub(crate) fn trimmed_text(&self) -> &str {
        self.text.trim()
    }

    /// Trimmed text of the first child called `name`.
    pub(crate) fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(Element::trimmed_text)
    }
}

/// An I/O failure raised on purpose by the transport's reader. It travels
/// through quick-xml inside an `io::Error` and is turned back into the
/// matching [`OspError`] here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamFault {
    TooLarge(u64),
    Timeout(&'static str, Duration),
    TokenTooLarge,
}

impl fmt::Display for StreamFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamFault::TooLarge(limit) => write!(f, "response larger than {limit} bytes"),
            StreamFault::Timeout(phase, after) => write!(f, "{phase} timed out after {after:?}"),
            StreamFault::TokenTooLarge => write!(f, "XML token larger than {MAX_TOKEN} bytes"),
        }
    }
}

impl std::error::Error for StreamFault {}

impl StreamFault {
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    fn to_osp(self) -> OspError {
        match self {
            StreamFault::TooLarge(limit) => OspError::ResponseTooLarge { limit },
            StreamFault::Timeout(phase, after) => OspError::Timeout { phase, after },
            StreamFault::TokenTooLarge => OspError::TokenTooLarge { limit: MAX_TOKEN },
        }
    }
}

/// Maps an I/O error seen while reading a response to our error type.
pub(crate) fn io_to_osp(e: &io::Error) -> OspError {
    if let Some(fault) = e.get_ref().and_then(|i| i.downcast_ref::<StreamFault>()) {
        return fault.to_osp();
    }
    OspError::Io(io::Error::new(e.kind(), e.to_string()))
}

/// Counts the bytes quick-xml takes for the current event and fails once
/// they pass [`MAX_TOKEN`], so one huge tag or text run cannot make the
/// event buffer grow without bound before we get to look at it.
struct TokenLimit<R> {
    inner: R,
    taken: usize,
}

impl<R: BufRead> io::Read for TokenLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.fill_buf()?.len().min(buf.len());
        buf[..n].copy_from_slice(&self.fill_buf()?[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for TokenLimit<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.taken > MAX_TOKEN {
            return Err(StreamFault::TokenTooLarge.into_io());
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.taken = self.taken.saturating_add(amt);
        self.inner.consume(amt);
    }
}

/// The bounded pull parser.
pub(crate) struct Pump<R: BufRead> {
    reader: Reader<TokenLimit<R>>,
    buf: Vec<u8>,
    depth: usize,
    /// Set once the root element has started: a second root is an error.
    seen_root: bool,
}

impl<R: BufRead> Pump<R> {
    pub(crate) fn new(input: R) -> Self {
        let mut reader = Reader::from_reader(TokenLimit {
            inner: input,
            taken: 0,
        });
        let config = reader.config_mut();
        config.expand_empty_elements = true;
        config.check_end_names = true;
        config.check_comments = true;
        config.trim_text_start = false;
        config.trim_text_end = false;
        Pump {
            reader,
            buf: Vec::with_capacity(8 * 1024),
            depth: 0,
            seen_root: false,
        }
    }

    /// Current element depth (1 inside the root element).
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    fn position(&self) -> u64 {
        self.reader.buffer_position()
    }

    pub(crate) fn malformed(&self, reason: impl Into<String>) -> OspError {
        OspError::Xml {
            position: self.position(),
            reason: reason.into(),
        }
    }

    /// Reads the next raw event and applies the limits that do not need
    /// decoding. The event borrows the internal buffer: no copy per event.
    fn raw_next(&mut self) -> Result<Event<'_>, OspError> {
        self.buf.clear();
        self.reader.get_mut().taken = 0;
        let before = self.reader.buffer_position();
        let ev = match self.reader.read_event_into(&mut self.buf) {
            Ok(ev) => ev,
            Err(e) => {
                return Err(match e {
                    quick_xml::Error::Io(io) => io_to_osp(&io),
                    other => OspError::Xml {
                        position: self.reader.error_position(),
                        reason: other.to_string(),
                    },
                })
            }
        };
        let position = self.reader.buffer_position();
        let malformed = |reason: &str| OspError::Xml {
            position,
            reason: reason.to_owned(),
        };
        if position.saturating_sub(before) > MAX_TOKEN as u64 {
            return Err(OspError::TokenTooLarge { limit: MAX_TOKEN });
        }
        match &ev {
            Event::Start(_) => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(OspError::TooDeep { limit: MAX_DEPTH });
                }
                if self.depth == 1 {
                    if self.seen_root {
                        return Err(malformed("more than one root element"));
                    }
                    self.seen_root = true;
                }
            }
            Event::End(_) => self.depth = self.depth.saturating_sub(1),
            Event::Empty(_) => {
                // expand_empty_elements is on; this cannot happen, but
                // refusing is safer than guessing.
                return Err(malformed("unexpected empty-element event"));
            }
            Event::DocType(_) => {
                // ospd never sends one; a DTD is the door to entity tricks.
                return Err(malformed("DOCTYPE is not accepted"));
            }
            Event::Eof if self.depth > 0 => {
                return Err(malformed("document ends inside an element"));
            }
            Event::Eof if !self.seen_root => return Err(OspError::EmptyResponse),
            _ => {}
        }
        Ok(ev)
    }

    /// Next decoded event. Comments, processing instructions and the XML
    /// declaration are skipped; whitespace outside the root is dropped.
    pub(crate) fn next(&mut self) -> Result<Ev, OspError> {
        loop {
            // Decode while the event borrows the buffer; report after.
            let decoded: Result<Option<Ev>, String> = match self.raw_next()? {
                Event::Start(s) => decode_tag(&s).map(|t| Some(Ev::Start(t))),
                Event::End(_) => Ok(Some(Ev::End)),
                Event::Text(t) => t
                    .xml_content()
                    .map(|c| Some(Ev::Text(c.into_owned())))
                    .map_err(|e| format!("text: {e}")),
                Event::CData(c) => c
                    .xml_content()
                    .map(|c| Some(Ev::Text(c.into_owned())))
                    .map_err(|e| format!("CDATA: {e}")),
                Event::GeneralRef(r) => resolve_ref(&r).map(|t| Some(Ev::Text(t))),
                Event::Eof => Ok(Some(Ev::Eof)),
                Event::Comment(_) | Event::PI(_) | Event::Decl(_) => Ok(None),
                Event::Empty(_) | Event::DocType(_) => Err("unexpected event".to_owned()),
            };
            let out = match decoded {
                Ok(Some(ev)) => ev,
                Ok(None) => continue,
                Err(reason) => return Err(self.malformed(reason)),
            };
            if self.depth == 0 {
                if let Ev::Text(t) = &out {
                    if t.trim().is_empty() {
                        continue;
                    }
                    return Err(self.malformed("text outside the root element"));
                }
            }
            return Ok(out);
        }
    }

    /// Cheap next event: only element names are decoded. Used to count
    /// and skip large parts of a response.
    pub(crate) fn next_shallow(&mut self) -> Result<Shallow, OspError> {
        let shallow = match self.raw_next()? {
            Event::Start(s) => match std::str::from_utf8(s.name().as_ref()) {
                Ok(name) => Shallow::Start(name.to_owned()),
                Err(_) => Shallow::BadName,
            },
            Event::End(_) => Shallow::End,
            Event::Eof => Shallow::Eof,
            _ => Shallow::Other,
        };
        if let Shallow::BadName = shallow {
            return Err(self.malformed("element name is not UTF-8"));
        }
        Ok(shallow)
    }

    /// Reads the rest of the element whose start tag was just returned,
    /// as a tree. Iterative, so nesting cannot blow the stack.
    pub(crate) fn read_element(&mut self, tag: Tag) -> Result<Element, OspError> {
        let mut stack = vec![Element::new(tag)];
        loop {
            match self.next()? {
                Ev::Start(t) => stack.push(Element::new(t)),
                Ev::Text(s) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&s);
                    }
                }
                Ev::End => {
                    let Some(done) = stack.pop() else {
                        return Err(self.malformed("unbalanced end tag"));
                    };
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => return Ok(done),
                    }
                }
                Ev::Eof => return Err(self.malformed("document ends inside an element")),
            }
        }
    }

    /// Skips the rest of the element whose start tag was just returned.
    pub(crate) fn skip_element(&mut self) -> Result<(), OspError> {
        let target = self.depth.saturating_sub(1);
        loop {
            match self.next_shallow()? {
                Shallow::End if self.depth == target => return Ok(()),
                Shallow::Eof => return Err(self.malformed("document ends inside an element")),
                _ => {}
            }
        }
    }

    /// After the root element closed: only whitespace, comments or
    /// processing instructions may follow.
    pub(crate) fn expect_eof(&mut self) -> Result<(), OspError> {
        match self.next()? {
            Ev::Eof => Ok(()),
            _ => Err(self.malformed("content after the root element")),
        }
    }
}

fn decode_tag(s: &BytesStart<'_>) -> Result<Tag, String> {
    let name = std::str::from_utf8(s.name().as_ref())
        .map_err(|_| "element name is not UTF-8".to_owned())?
        .to_owned();
    let mut attrs = Vec::new();
    for attr in s.attributes() {
        let attr = attr.map_err(|e| format!("attribute in <{name}>: {e}"))?;
        if attrs.len() >= MAX_ATTRS {
            return Err(format!("more than {MAX_ATTRS} attributes in <{name}>"));
        }
        let key = std::str::from_utf8(attr.key.as_ref())
            .map_err(|_| format!("attribute name in <{name}> is not UTF-8"))?
            .to_owned();
        let value = attr
            .unescape_value()
            .map_err(|e| format!("attribute {key} in <{name}>: {e}"))?
            .into_owned();
        attrs.push((key, value));
    }
    Ok(Tag { name, attrs })
}

/// Resolves `&name;` / `&#N;`: the five predefined entities and character
/// references only. Anything else is an error, never an expansion.
fn resolve_ref(r: &BytesRef<'_>) -> Result<String, String> {
    match r.resolve_char_ref() {
        Ok(Some(c)) => return Ok(c.to_string()),
        Ok(None) => {}
        Err(e) => return Err(format!("character reference: {e}")),
    }
    let name = r.decode().map_err(|e| format!("entity name: {e}"))?;
    quick_xml::escape::resolve_predefined_entity(&name)
        .map(str::to_owned)
        .ok_or_else(|| format!("unknown entity &{name};"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(xml: &str) -> Result<Element, OspError> {
        let mut p = Pump::new(xml.as_bytes());
        match p.next()? {
            Ev::Start(t) => {
                let e = p.read_element(t)?;
                p.expect_eof()?;
                Ok(e)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn reads_a_tree_with_entities_and_cdata() {
        let e = tree(
            "<?xml version='1.0' encoding='utf-8'?>\n<a k=\"x &amp; &#x3C;y&gt;\"><b>1 &lt; 2 &amp; <![CDATA[<raw>]]></b><b/></a>",
        )
        .unwrap();
        assert_eq!(e.attr("k"), Some("x & <y>"));
        assert_eq!(e.child_text("b"), Some("1 < 2 & <raw>"));
        assert_eq!(e.children_named("b").count(), 2);
    }

    #[test]
    fn refuses_doctype_and_unknown_entities() {
        let dtd = "<!DOCTYPE a [<!ENTITY x \"boom\">]><a>&x;</a>";
        assert!(matches!(tree(dtd), Err(OspError::Xml { .. })));
        assert!(matches!(tree("<a>&x;</a>"), Err(OspError::Xml { .. })));
        assert!(matches!(tree("<a>&#0;</a>"), Err(OspError::Xml { .. })));
    }

    #[test]
    fn refuses_deep_nesting() {
        let xml = "<a>".repeat(10_000) + &"</a>".repeat(10_000);
        assert!(matches!(tree(&xml), Err(OspError::TooDeep { .. })));
    }

    #[test]
    fn refuses_invalid_utf8() {
        let mut p = Pump::new(&b"<a k=\"\xff\">x</a>"[..]);
        assert!(matches!(p.next(), Err(OspError::Xml { .. })));
        let mut p = Pump::new(&b"<a>\xc3\x28</a>"[..]);
        let r = (|| {
            let Ev::Start(t) = p.next()? else {
                unreachable!()
            };
            p.read_element(t)
        })();
        assert!(matches!(r, Err(OspError::Xml { .. })), "{r:?}");
    }

    #[test]
    fn refuses_mismatched_truncated_and_doubled_documents() {
        assert!(tree("<a><b></a></b>").is_err());
        assert!(tree("<a><b>").is_err());
        assert!(tree("<a/><a/>").is_err());
        assert!(tree("<a/>junk").is_err());
        assert!(matches!(tree(""), Err(OspError::EmptyResponse)));
    }

    #[test]
    fn refuses_too_many_attributes() {
        let attrs: String = (0..100).map(|i| format!(" a{i}=\"1\"")).collect();
        assert!(tree(&format!("<a{attrs}/>")).is_err());
    }

    #[test]
    fn huge_tokens_are_cut_off_while_reading() {
        let xml = format!("<a>{}</a>", "x".repeat(MAX_TOKEN + 100_000));
        let mut p = Pump::new(std::io::BufReader::with_capacity(4096, xml.as_bytes()));
        let Ev::Start(t) = p.next().unwrap() else {
            unreachable!()
        };
        assert!(matches!(
            p.read_element(t),
            Err(OspError::TokenTooLarge { .. })
        ));
        // The event buffer stopped near the limit instead of taking it all.
        assert!(p.buf.len() <= MAX_TOKEN + 4096, "{}", p.buf.len());
    }

    #[test]
    fn stream_faults_survive_the_trip_through_io_error() {
        let e = StreamFault::TooLarge(10).into_io();
        assert!(matches!(
            io_to_osp(&e),
            OspError::ResponseTooLarge { limit: 10 }
        ));
    }
}
