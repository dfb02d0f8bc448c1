//! A tiny XML writer for OSP commands: escapes every value and refuses
//! what XML cannot carry, instead of producing a broken command.

use crate::error::OspError;

/// Builds one command document. Errors are remembered and reported by
/// [`XmlWriter::finish`], so building code stays linear.
pub(crate) struct XmlWriter {
    out: String,
    open: Vec<String>,
    error: Option<OspError>,
}

impl XmlWriter {
    pub(crate) fn new() -> Self {
        XmlWriter {
            out: String::with_capacity(256),
            open: Vec::new(),
            error: None,
        }
    }

    /// `<name a="v" ...>`; `None` values are left out.
    pub(crate) fn open(&mut self, name: &str, attrs: &[(&str, Option<&str>)]) -> &mut Self {
        self.start_tag(name, attrs);
        self.out.push('>');
        self.open.push(name.to_owned());
        self
    }

    /// `<name a="v" .../>`
    pub(crate) fn empty(&mut self, name: &str, attrs: &[(&str, Option<&str>)]) -> &mut Self {
        self.start_tag(name, attrs);
        self.out.push_str("/>");
        self
    }

    /// Closes the innermost open element.
    pub(crate) fn close(&mut self) -> &mut Self {
        if let Some(name) = self.open.pop() {
            self.out.push_str("</");
            self.out.push_str(&name);
            self.out.push('>');
        }
        self
    }

    /// `<name>text</name>`
    pub(crate) fn text_element(&mut self, name: &str, text: &str) -> &mut Self {
        self.open(name, &[]);
        self.text(text);
        self.close()
    }

    /// `<name a="v">text</name>`
    pub(crate) fn text_element_with(
        &mut self,
        name: &str,
        attrs: &[(&str, Option<&str>)],
        text: &str,
    ) -> &mut Self {
        self.open(name, attrs);
        self.text(text);
        self.close()
    }

    /// Escaped character data.
    pub(crate) fn text(&mut self, text: &str) -> &mut Self {
        if self.check_chars(text) {
            escape_into(&mut self.out, text, false);
        }
        self
    }

    /// The finished document, or the first problem met while building it.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, OspError> {
        while !self.open.is_empty() {
            self.close();
        }
        match self.error.take() {
            Some(e) => {
                crate::secret::wipe(std::mem::take(&mut self.out).into_bytes());
                Err(e)
            }
            None => Ok(std::mem::take(&mut self.out).into_bytes()),
        }
    }

    fn start_tag(&mut self, name: &str, attrs: &[(&str, Option<&str>)]) {
        self.check_name(name);
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attrs {
            let Some(value) = value else { continue };
            self.check_name(key);
            if !self.check_chars(value) {
                continue;
            }
            self.out.push(' ');
            self.out.push_str(key);
            self.out.push_str("=\"");
            escape_into(&mut self.out, value, true);
            self.out.push('"');
        }
    }

    fn check_name(&mut self, name: &str) {
        if !is_xml_name(name) && self.error.is_none() {
            self.error = Some(OspError::InvalidRequest(format!(
                "{name:?} is not a valid XML element or attribute name"
            )));
        }
    }

    fn check_chars(&mut self, value: &str) -> bool {
        match value.chars().find(|c| !is_xml_char(*c)) {
            None => true,
            Some(c) => {
                if self.error.is_none() {
                    // Name the code point only: the value may be a password.
                    self.error = Some(OspError::InvalidRequest(format!(
                        "value contains U+{:04X}, which XML 1.0 cannot carry",
                        c as u32
                    )));
                }
                false
            }
        }
    }
}

impl Drop for XmlWriter {
    fn drop(&mut self) {
        // The buffer may hold credentials if building was abandoned.
        crate::secret::wipe(std::mem::take(&mut self.out).into_bytes());
    }
}

/// Characters allowed by XML 1.0 (`Char` production).
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c,
        '\u{9}' | '\u{A}' | '\u{D}'
        | '\u{20}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}'
        | '\u{10000}'..='\u{10FFFF}')
}

/// A conservative XML name: ASCII letter or `_` first, then letters,
/// digits, `_`, `-`, `.`. Every OSP element and scanner preference fits.
pub(crate) fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    name.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Escapes markup characters. In attributes also quotes and the
/// whitespace that attribute-value normalisation would otherwise turn
/// into plain spaces.
fn escape_into(out: &mut String, value: &str, attribute: bool) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            '"' if attribute => out.push_str("&quot;"),
            '\'' if attribute => out.push_str("&apos;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\t' if attribute => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_in_text_and_attributes() {
        let mut w = XmlWriter::new();
        w.open("a", &[("x", Some("1\"2'<&>\n"))])
            .text("<b>&amp;")
            .close();
        let xml = String::from_utf8(w.finish().unwrap()).unwrap();
        assert_eq!(
            xml,
            "<a x=\"1&quot;2&apos;&lt;&amp;&gt;&#10;\">&lt;b&gt;&amp;amp;</a>"
        );
    }

    #[test]
    fn refuses_characters_xml_cannot_carry() {
        let mut w = XmlWriter::new();
        w.text_element("password", "ab\u{0}cd");
        let err = w.finish().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("U+0000"), "{msg}");
        assert!(!msg.contains("ab"), "the value must not be echoed: {msg}");
    }

    #[test]
    fn refuses_bad_element_names() {
        for bad in ["", "1abc", "a b", "a<b", "a/b", "x\u{e9}"] {
            let mut w = XmlWriter::new();
            w.empty(bad, &[]);
            assert!(w.finish().is_err(), "{bad:?} accepted");
        }
        for good in ["target_port", "a.b-c", "_x1"] {
            let mut w = XmlWriter::new();
            w.empty(good, &[]);
            assert!(w.finish().is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn unclosed_elements_are_closed_by_finish() {
        let mut w = XmlWriter::new();
        w.open("a", &[]).open("b", &[("k", None)]);
        assert_eq!(w.finish().unwrap(), b"<a><b></b></a>");
    }
}
