//! The PDF of an invoice (`GET /v1/account/invoices/{invoice_id}/pdf`), drawn from the same
//! [`InvoiceView`] the JSON answer serializes, so every figure on the page is the JSON's.
//!
//! An A4 page: the title with the invoice's number and status; the issuer (`PUT
//! /v1/admin/issuer`; while none is set the block says so rather than inventing a seller);
//! the customer; the invoice's details (id, kind, status, issue date, period, currency,
//! purchase); the lines (what each bills, by its description: an endpoint, or a serverless
//! app's runner time; unit, quantity, unit price, discount, line total, charge
//! period); subtotal, discount and total in USD. Amounts are written from their exact decimals
//! (at least two decimals, every significant nano-USD digit, no grouping), never through a
//! float; times are UTC.
//!
//! Many lines (a usage invoice may have dozens): the table first shrinks its type, from 9 pt
//! down to 7 pt, to keep the invoice on one page; when even that does not fit, it continues
//! on further pages (the table's head repeated, the totals after the last line, "Page i of n"
//! on every page). Columns are as wide as their widest cell; the item column takes the rest of
//! the width, and only a description too long for it even at 7 pt is shortened ("...").
//!
//! Text is set in the PDF standard fonts Helvetica and Helvetica-Bold (every reader has them,
//! nothing is embedded) with WinAnsiEncoding, so it is real text that `pdftotext` and screen
//! readers extract; a character outside that encoding (beyond Western European) prints as `?`.
//! The output is deterministic: the same invoice gives the same bytes.
//!
//! Positions, sizes and text widths on the page are points, `f32` as PDF takes them: the float
//! arithmetic allowed here is geometry only. No amount passes through a float; each arrives as
//! an exact decimal and is printed as its text.
#![allow(clippy::float_arithmetic)]

use super::{InvoiceLine, InvoiceView};
use crate::wire::Time;
use chrono::{DateTime, Datelike, Timelike, Utc};
use pdf_writer::{Content, Date, Finish, Name, Pdf, Rect, Ref, Str, TextStr};
use rust_decimal::Decimal;
use serde::Serialize;

const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const MARGIN: f32 = 50.0;
const LEFT: f32 = MARGIN;
const RIGHT: f32 = PAGE_W - MARGIN;
const CONTENT_W: f32 = RIGHT - LEFT;
/// Where a continuation page's table starts.
const CONTINUED_TOP: f32 = PAGE_H - MARGIN - 36.0;
/// Nothing but the footer goes below this.
const BOTTOM: f32 = 62.0;
const FOOTER_Y: f32 = 36.0;
/// The table's type sizes, tried largest first; the last one is also the continuation pages'.
const TABLE_SIZES: [f32; 5] = [9.0, 8.5, 8.0, 7.5, 7.0];
/// A table row's height, in multiples of its type size.
const ROW_LEADING: f32 = 1.75;
/// A cell's padding on either side.
const PAD: f32 = 4.0;
/// The totals block below the table: three rows and a rule.
const TOTALS_H: f32 = 64.0;

const INK: f32 = 0.1;
const MUTED: f32 = 0.42;

/// The table's columns: heading and alignment (`true`: right-aligned figures).
const COLUMNS: [(&str, bool); 7] = [
    ("Item", false),
    ("Unit", false),
    ("Quantity", true),
    ("Unit price (USD)", true),
    ("Discount", true),
    ("Line total (USD)", true),
    ("Charge period (UTC)", false),
];

/// Renders `inv` as a PDF document.
pub(crate) fn render(inv: &InvoiceView) -> Vec<u8> {
    let mut doc = Doc::default();
    doc.new_page();
    let table_top = header(&mut doc, inv);
    let rows: Vec<[String; 7]> = inv.lines.iter().map(cells).collect();
    let table = Table::fit(rows, table_top);
    let y = table.draw(&mut doc, inv, table_top);
    totals(&mut doc, inv, y);
    doc.footers(inv);
    doc.finish(inv)
}

// ---------------------------------------------------------------------------------------------
// What is printed: the view's values as text.

/// A USD amount: its exact decimal, with at least two decimals and every significant digit.
fn money(d: Decimal) -> String {
    let mut d = d.normalize();
    if d.scale() < 2 {
        d.rescale(2);
    }
    d.to_string()
}

/// A quantity: its exact decimal, without trailing zeros.
fn quantity(d: Decimal) -> String {
    d.normalize().to_string()
}

/// A percent discount (`10` is 10%).
fn percent(d: Decimal) -> String {
    format!("{}%", d.normalize())
}

/// A time in UTC, as short as it is exact: the date alone at midnight, else with minutes,
/// seconds or milliseconds as far as they are not zero.
fn instant(t: Time) -> String {
    let Some(dt) = DateTime::<Utc>::from_timestamp_millis(t.0 .0) else {
        return t.0 .0.to_string();
    };
    let fmt = if dt.timestamp_subsec_millis() != 0 {
        "%Y-%m-%d %H:%M:%S%.3f"
    } else if dt.second() != 0 {
        "%Y-%m-%d %H:%M:%S"
    } else if dt.hour() != 0 || dt.minute() != 0 {
        "%Y-%m-%d %H:%M"
    } else {
        "%Y-%m-%d"
    };
    dt.format(fmt).to_string()
}

/// The issue date (UTC).
fn date(t: Time) -> String {
    DateTime::<Utc>::from_timestamp_millis(t.0 .0)
        .map(|dt| dt.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| t.0 .0.to_string())
}

/// A period from `start` to `end`; one time when they are the same instant.
fn period(start: Time, end: Time) -> String {
    if start == end {
        instant(start)
    } else {
        format!("{} \u{2013} {}", instant(start), instant(end))
    }
}

/// An enum of the view as a reader would say it: its JSON name (`top_up`) in words
/// (`Top-up`), so that a new kind or status prints without a change here.
fn label(v: &impl Serialize) -> String {
    let name = serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match name.as_str() {
        "top_up" => "Top-up".to_string(),
        other => {
            let words = other.replace('_', " ");
            let mut chars = words.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect(),
                None => words,
            }
        }
    }
}

/// One line's cells, in the order of [`COLUMNS`].
fn cells(line: &InvoiceLine) -> [String; 7] {
    let unit: &str = &line.unit;
    [
        line.description.clone(),
        unit.to_string(),
        quantity(line.quantity.0),
        money(line.unit_price.0),
        percent(line.percent_discount.0),
        money(line.cost_total.0),
        period(line.charge_period_start, line.charge_period_end),
    ]
}

// ---------------------------------------------------------------------------------------------
// The blocks of the page.

/// The title, the issuer, the customer and the details; returns where the table may start.
fn header(doc: &mut Doc, inv: &InvoiceView) -> f32 {
    let top = PAGE_H - MARGIN;
    doc.text(LEFT, top - 18.0, Font::Bold, 22.0, INK, "INVOICE");
    doc.text_right(RIGHT, top - 10.0, Font::Bold, 12.0, INK, &inv.number);
    let status = label(&inv.status).to_uppercase();
    doc.text_right(RIGHT, top - 25.0, Font::Bold, 10.0, MUTED, &status);

    // Left: who issues it, who it is for.
    let col_w = 250.0;
    let mut y = top - 58.0;
    doc.text(LEFT, y, Font::Bold, 7.5, MUTED, "FROM");
    y -= 14.0;
    match &inv.issuer {
        Some(issuer) => {
            y = doc.paragraph(LEFT, y, col_w, Font::Bold, 10.0, INK, &issuer.name);
            y = doc.paragraph(LEFT, y, col_w, Font::Regular, 9.0, INK, &issuer.address);
            if let Some(email) = &issuer.email {
                y = doc.paragraph(LEFT, y, col_w, Font::Regular, 9.0, INK, email);
            }
            if let Some(tax_id) = &issuer.tax_id {
                let line = format!("Tax ID: {tax_id}");
                y = doc.paragraph(LEFT, y, col_w, Font::Regular, 9.0, INK, &line);
            }
        }
        None => {
            y = doc.paragraph(
                LEFT,
                y,
                col_w,
                Font::Regular,
                9.0,
                MUTED,
                "Issuer not set (the operator sets it with PUT /v1/admin/issuer)",
            );
        }
    }
    y -= 12.0;
    doc.text(LEFT, y, Font::Bold, 7.5, MUTED, "BILL TO");
    y -= 14.0;
    let customer = inv.username.to_string();
    y = doc.paragraph(LEFT, y, col_w, Font::Bold, 10.0, INK, &customer);
    let left_end = y;

    // Right: the invoice's details.
    let (label_x, value_x) = (330.0, 410.0);
    let value_w = RIGHT - value_x;
    let mut details = vec![
        ("Invoice number", inv.number.clone()),
        ("Invoice ID", inv.invoice_id.clone()),
        ("Kind", label(&inv.kind)),
        ("Status", label(&inv.status)),
        ("Issue date", date(inv.issued_at)),
        ("Period (UTC)", period(inv.period_start, inv.period_end)),
        ("Currency", inv.currency.to_string()),
    ];
    if let Some(p) = &inv.purchase_id {
        details.push(("Purchase", p.to_string()));
    }
    if let Some(at) = inv.paid_at {
        details.push(("Paid", date(at)));
    }
    if let Some(r) = &inv.payment_reference {
        details.push(("Payment reference", r.clone()));
    }
    if let Some(at) = inv.voided_at {
        details.push(("Voided", date(at)));
    }
    if let Some(r) = &inv.void_reason {
        details.push(("Void reason", r.clone()));
    }
    let mut y = top - 58.0;
    for (name, value) in &details {
        doc.text(label_x, y, Font::Regular, 8.5, MUTED, name);
        y = doc.paragraph(value_x, y, value_w, Font::Regular, 9.0, INK, value);
        y -= 2.0;
    }
    left_end.min(y) - 18.0
}

/// The lines, at one type size, on as many pages as they need.
struct Table {
    rows: Vec<[String; 7]>,
    size: f32,
    widths: [f32; 7],
}

impl Table {
    /// The largest type size at which every column fits the width and the whole table and
    /// the totals fit the first page below `top`; else the smallest size, on further pages.
    fn fit(rows: Vec<[String; 7]>, top: f32) -> Table {
        let one_page = |size: f32| {
            let row_h = size * ROW_LEADING;
            top - row_h * (rows.len() + 1) as f32 - TOTALS_H >= BOTTOM
        };
        let chosen = TABLE_SIZES
            .iter()
            .copied()
            .find(|&size| one_page(size) && Table::widths(&rows, size).1)
            .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1]);
        let (widths, _) = Table::widths(&rows, chosen);
        Table {
            rows,
            size: chosen,
            widths,
        }
    }

    /// Each column's width at `size` (the item column takes what the others leave), and
    /// whether every endpoint fits in it.
    fn widths(rows: &[[String; 7]], size: f32) -> ([f32; 7], bool) {
        let mut w = [0.0f32; 7];
        for (i, (heading, _)) in COLUMNS.iter().enumerate() {
            w[i] = width(heading, Font::Bold, size);
        }
        for row in rows {
            for (i, cell) in row.iter().enumerate() {
                w[i] = w[i].max(width(cell, Font::Regular, size));
            }
        }
        let needed = w[0] + 2.0 * PAD;
        for x in w.iter_mut() {
            *x += 2.0 * PAD;
        }
        let others: f32 = w[1..].iter().sum();
        w[0] = CONTENT_W - others;
        (w, w[0] >= needed)
    }

    /// Draws the head and the rows from `top` down, continuing on new pages (the last row
    /// where the totals fit below it); returns where the last row ended.
    fn draw(&self, doc: &mut Doc, inv: &InvoiceView, top: f32) -> f32 {
        let row_h = self.size * ROW_LEADING;
        let mut y = self.head(doc, top);
        for (n, row) in self.rows.iter().enumerate() {
            // The last line goes with the totals, so that no page holds the totals alone.
            let last = n + 1 == self.rows.len();
            if y - row_h - if last { TOTALS_H } else { 0.0 } < BOTTOM {
                doc.new_page();
                continued(doc, inv);
                y = self.head(doc, CONTINUED_TOP);
            }
            if n % 2 == 1 {
                doc.fill_rect(LEFT, y - row_h, CONTENT_W, row_h, 0.96);
            }
            self.row(doc, y, row, Font::Regular);
            y -= row_h;
        }
        doc.rule(LEFT, RIGHT, y, 0.6, 0.75);
        y
    }

    /// The table's head at `y`; returns where the first row starts.
    fn head(&self, doc: &mut Doc, y: f32) -> f32 {
        let row_h = self.size * ROW_LEADING;
        doc.fill_rect(LEFT, y - row_h, CONTENT_W, row_h, 0.9);
        let headings = COLUMNS.map(|(h, _)| h.to_string());
        self.row(doc, y, &headings, Font::Bold);
        y - row_h
    }

    fn row(&self, doc: &mut Doc, y: f32, cells: &[String; 7], font: Font) {
        let baseline = y - self.size * ROW_LEADING + self.size * 0.6;
        let mut x = LEFT;
        for (i, cell) in cells.iter().enumerate() {
            let inner = self.widths[i] - 2.0 * PAD;
            if COLUMNS[i].1 {
                doc.text_right(
                    x + self.widths[i] - PAD,
                    baseline,
                    font,
                    self.size,
                    INK,
                    cell,
                );
            } else {
                let shown = shorten(cell, font, self.size, inner);
                doc.text(x + PAD, baseline, font, self.size, INK, &shown);
            }
            x += self.widths[i];
        }
    }
}

/// A continuation page's title.
fn continued(doc: &mut Doc, inv: &InvoiceView) {
    let title = format!("Invoice {} (continued)", inv.number);
    doc.text(LEFT, PAGE_H - MARGIN - 12.0, Font::Bold, 12.0, INK, &title);
}

/// Subtotal, discount and total below the table (on a new page if they do not fit).
fn totals(doc: &mut Doc, inv: &InvoiceView, mut y: f32) {
    if y - TOTALS_H < BOTTOM {
        doc.new_page();
        continued(doc, inv);
        y = CONTINUED_TOP;
    }
    let label_x = RIGHT - 230.0;
    let value_x = RIGHT - PAD;
    // The discount is taken off the subtotal: printed with its sign as it counts.
    let discount = if inv.discount.0.is_zero() {
        money(Decimal::ZERO)
    } else {
        money(-inv.discount.0)
    };
    y -= 18.0;
    doc.text(label_x, y, Font::Regular, 9.5, INK, "Subtotal");
    doc.text_right(value_x, y, Font::Regular, 9.5, INK, &money(inv.subtotal.0));
    y -= 15.0;
    doc.text(label_x, y, Font::Regular, 9.5, INK, "Discount");
    doc.text_right(value_x, y, Font::Regular, 9.5, INK, &discount);
    y -= 8.0;
    doc.rule(label_x, RIGHT, y, 0.8, INK);
    y -= 15.0;
    let total_label = format!("Total ({})", inv.currency);
    doc.text(label_x, y, Font::Bold, 11.0, INK, &total_label);
    doc.text_right(value_x, y, Font::Bold, 11.0, INK, &money(inv.total.0));
}

// ---------------------------------------------------------------------------------------------
// Text in the standard fonts.

#[derive(Clone, Copy)]
enum Font {
    Regular,
    Bold,
}

impl Font {
    fn name(self) -> Name<'static> {
        match self {
            Font::Regular => Name(b"F1"),
            Font::Bold => Name(b"F2"),
        }
    }

    /// The advance width of a WinAnsi byte, in thousandths of the type size (Adobe's metrics
    /// of the standard fonts for ASCII; characters beyond it are measured generously).
    fn advance(self, b: u8) -> u16 {
        let (ascii, wide) = match self {
            Font::Regular => (&HELVETICA, 667),
            Font::Bold => (&HELVETICA_BOLD, 722),
        };
        match b {
            32..=126 => ascii[(b - 32) as usize],
            0x85 | 0x97 => 1000,
            0x96 => 556,
            _ => wide,
        }
    }
}

/// Helvetica's widths of ASCII 32..=126.
const HELVETICA: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667,
    611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500,
    222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
];

/// Helvetica-Bold's widths of ASCII 32..=126.
const HELVETICA_BOLD: [u16; 95] = [
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, 975, 722, 722, 722, 722, 667,
    611, 778, 722, 278, 556, 722, 611, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 333, 278, 333, 584, 556, 333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556,
    278, 889, 611, 611, 611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
];

/// `s` in WinAnsiEncoding: ASCII and Latin-1 as they are, a few typographic marks, control
/// characters as spaces, anything else as `?`.
fn encode(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            ' '..='~' => c as u8,
            '\u{a0}'..='\u{ff}' => c as u32 as u8,
            '\u{2013}' => 0x96,
            '\u{2014}' => 0x97,
            '\u{2026}' => 0x85,
            '\u{20ac}' => 0x80,
            c if c.is_control() => b' ',
            _ => b'?',
        })
        .collect()
}

/// The width of `s` set in `font` at `size` points.
fn width(s: &str, font: Font, size: f32) -> f32 {
    let units: u32 = encode(s).iter().map(|&b| font.advance(b) as u32).sum();
    units as f32 * size / 1000.0
}

/// `s`, shortened with "..." to fit `max` points.
fn shorten(s: &str, font: Font, size: f32, max: f32) -> String {
    if width(s, font, size) <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().collect();
    while !out.is_empty() && width(&format!("{out}..."), font, size) > max {
        out.pop();
    }
    format!("{out}...")
}

/// `text` broken into lines of at most `max` points: at its line breaks, between words, and
/// inside a word longer than a line.
fn wrap(text: &str, font: Font, size: f32, max: f32) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_string()
            } else {
                format!("{line} {word}")
            };
            if width(&candidate, font, size) <= max {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            for c in word.chars() {
                line.push(c);
                if width(&line, font, size) > max && line.chars().count() > 1 {
                    line.pop();
                    lines.push(std::mem::replace(&mut line, c.to_string()));
                }
            }
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// The document.

/// The pages' content streams, and the one being drawn on.
#[derive(Default)]
struct Doc {
    pages: Vec<Content>,
    current: usize,
}

impl Doc {
    fn new_page(&mut self) {
        self.pages.push(Content::new());
        self.current = self.pages.len() - 1;
    }

    fn page(&mut self) -> &mut Content {
        &mut self.pages[self.current]
    }

    fn text(&mut self, x: f32, y: f32, font: Font, size: f32, gray: f32, s: &str) {
        let bytes = encode(s);
        let c = self.page();
        c.set_fill_gray(gray);
        c.begin_text();
        c.set_font(font.name(), size);
        c.next_line(x, y);
        c.show(Str(&bytes));
        c.end_text();
    }

    fn text_right(&mut self, right: f32, y: f32, font: Font, size: f32, gray: f32, s: &str) {
        let x = right - width(s, font, size);
        self.text(x, y, font, size, gray, s);
    }

    /// `s` wrapped to `max` points from baseline `y` down; returns the next baseline.
    #[allow(clippy::too_many_arguments)]
    fn paragraph(
        &mut self,
        x: f32,
        mut y: f32,
        max: f32,
        font: Font,
        size: f32,
        gray: f32,
        s: &str,
    ) -> f32 {
        for line in wrap(s, font, size, max) {
            self.text(x, y, font, size, gray, &line);
            y -= size * 1.35;
        }
        y
    }

    fn fill_rect(&mut self, x: f32, y: f32, w: f32, h: f32, gray: f32) {
        let c = self.page();
        c.set_fill_gray(gray);
        c.rect(x, y, w, h);
        c.fill_nonzero();
    }

    fn rule(&mut self, x1: f32, x2: f32, y: f32, line_width: f32, gray: f32) {
        let c = self.page();
        c.set_stroke_gray(gray);
        c.set_line_width(line_width);
        c.move_to(x1, y);
        c.line_to(x2, y);
        c.stroke();
    }

    /// Every page's footer: the invoice, the customer, "Page i of n".
    fn footers(&mut self, inv: &InvoiceView) {
        let n = self.pages.len();
        let left = format!(
            "Invoice {} \u{2013} {}. Amounts in {}; times in UTC.",
            inv.number, inv.username, inv.currency
        );
        for i in 0..n {
            self.current = i;
            self.rule(LEFT, RIGHT, FOOTER_Y + 12.0, 0.4, 0.8);
            self.text(LEFT, FOOTER_Y, Font::Regular, 7.5, MUTED, &left);
            let page = format!("Page {} of {n}", i + 1);
            self.text_right(RIGHT, FOOTER_Y, Font::Regular, 7.5, MUTED, &page);
        }
    }

    fn finish(self, inv: &InvoiceView) -> Vec<u8> {
        let mut pdf = Pdf::new();
        let catalog = Ref::new(1);
        let tree = Ref::new(2);
        let regular = Ref::new(3);
        let bold = Ref::new(4);
        let info = Ref::new(5);
        let first_page = 6;
        let page_ids: Vec<Ref> = (0..self.pages.len())
            .map(|i| Ref::new(first_page + 2 * i as i32))
            .collect();

        pdf.catalog(catalog).pages(tree);
        pdf.pages(tree)
            .kids(page_ids.iter().copied())
            .count(page_ids.len() as i32);
        for (font, id) in [(Font::Regular, regular), (Font::Bold, bold)] {
            let base = match font {
                Font::Regular => Name(b"Helvetica"),
                Font::Bold => Name(b"Helvetica-Bold"),
            };
            pdf.type1_font(id)
                .base_font(base)
                .encoding_predefined(Name(b"WinAnsiEncoding"));
        }
        let title = format!("Invoice {}", inv.number);
        let mut doc_info = pdf.document_info(info);
        doc_info.title(TextStr(&title)).creator(TextStr("tollgate"));
        if let Some(issuer) = &inv.issuer {
            doc_info.author(TextStr(&issuer.name));
        }
        if let Some(dt) = DateTime::<Utc>::from_timestamp_millis(inv.issued_at.0 .0) {
            if let Ok(year) = u16::try_from(dt.year()) {
                doc_info.creation_date(
                    Date::new(year)
                        .month(dt.month() as u8)
                        .day(dt.day() as u8)
                        .hour(dt.hour() as u8)
                        .minute(dt.minute() as u8)
                        .second(dt.second() as u8)
                        .utc_offset_hour(0),
                );
            }
        }
        doc_info.finish();

        for (page, (id, content)) in page_ids.iter().zip(self.pages).enumerate() {
            let content_id = Ref::new(first_page + 2 * page as i32 + 1);
            let mut p = pdf.page(*id);
            p.media_box(Rect::new(0.0, 0.0, PAGE_W, PAGE_H));
            p.parent(tree);
            p.contents(content_id);
            let mut resources = p.resources();
            let mut fonts = resources.fonts();
            fonts.pair(Font::Regular.name(), regular);
            fonts.pair(Font::Bold.name(), bold);
            fonts.finish();
            resources.finish();
            p.finish();
            pdf.stream(content_id, &content.finish());
        }
        pdf.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoices::{InvoiceKindView, InvoiceStatusView, IssuerBody};
    use crate::wire::Number;
    use std::str::FromStr;
    use tollgate_core::ids::AccountId;
    use tollgate_core::Timestamp;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    /// 2026-06-01T00:00:00Z.
    const JUNE: i64 = 1_780_272_000_000;
    const DAY: i64 = 86_400_000;

    /// A usage invoice of `n` lines, `i + 1` images at 0.025 USD with 10% off each, in June;
    /// its sums are the lines' exact sums. (Its kind says top-up, the one kind the view has
    /// yet; the layout reads any kind and any lines alike.)
    fn usage_invoice(n: usize) -> InvoiceView {
        let (mut subtotal, mut discount) = (Decimal::ZERO, Decimal::ZERO);
        let lines: Vec<InvoiceLine> = (0..n)
            .map(|i| {
                let q = Decimal::from(i as i64 + 1);
                let sub = q * d("0.025");
                let off = sub * d("0.1");
                subtotal += sub;
                discount += off;
                let endpoint = format!("fal-ai/model-{i:03}/text-to-image");
                InvoiceLine {
                    description: endpoint.clone(),
                    endpoint_id: Some(endpoint),
                    unit: "image".into(),
                    quantity: Number(q),
                    unit_price: Number(d("0.025")),
                    percent_discount: Number(d("10")),
                    cost_subtotal: Number(sub),
                    cost_discount: Number(off),
                    cost_total: Number(sub - off),
                    cost_total_nano_usd: 0,
                    charge_period_start: Time(Timestamp(JUNE + (i as i64 % 30) * DAY)),
                    charge_period_end: Time(Timestamp(JUNE + (i as i64 % 30 + 1) * DAY)),
                }
            })
            .collect();
        InvoiceView {
            invoice_id: "inv_2026_000042".into(),
            number: "TG-2026-000042".into(),
            username: AccountId::parse("acme").unwrap(),
            kind: InvoiceKindView::Usage,
            status: InvoiceStatusView::Open,
            issued_at: Time(Timestamp(JUNE + 30 * DAY)),
            period_start: Time(Timestamp(JUNE)),
            period_end: Time(Timestamp(JUNE + 30 * DAY)),
            currency: "USD",
            lines,
            subtotal: Number(subtotal),
            discount: Number(discount),
            total: Number(subtotal - discount),
            total_nano_usd: 0,
            purchase_id: None,
            corrects_invoice_id: None,
            paid_at: None,
            payment_reference: None,
            voided_at: None,
            void_reason: None,
            issuer: Some(IssuerBody {
                name: "Example AI Inc.".into(),
                address: "1 Main St\nSpringfield, 12345".into(),
                email: Some("billing@example.com".into()),
                tax_id: Some("US12-3456789".into()),
            }),
        }
    }

    /// The text `pdftotext -layout` extracts from `pdf` (TOLLGATE_PDFTOTEXT, which
    /// scripts/test.sh sets; without it the test fails).
    fn pdftotext(pdf: &[u8]) -> String {
        let tool = std::env::var("TOLLGATE_PDFTOTEXT").unwrap_or_else(|_| {
            panic!(
                "TOLLGATE_PDFTOTEXT is not set: run the tests with scripts/test.sh, which \
                 installs poppler-utils and sets it"
            )
        });
        let dir = std::env::temp_dir().join(format!("tollgate-pdf-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("invoice.pdf");
        std::fs::write(&file, pdf).unwrap();
        let out = std::process::Command::new(&tool)
            .args(["-layout", "-enc", "UTF-8"])
            .arg(&file)
            .arg("-")
            .output()
            .unwrap_or_else(|e| panic!("TOLLGATE_PDFTOTEXT={tool} cannot be run: {e}"));
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            out.status.success(),
            "pdftotext refused the document: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The table as `render` lays it out for `inv`.
    fn fitted(inv: &InvoiceView) -> Table {
        let mut doc = Doc::default();
        doc.new_page();
        let top = header(&mut doc, inv);
        Table::fit(inv.lines.iter().map(cells).collect(), top)
    }

    /// The largest type size at which the columns of `inv`'s lines fit the width.
    fn widest_fit(inv: &InvoiceView) -> f32 {
        let rows: Vec<[String; 7]> = inv.lines.iter().map(cells).collect();
        TABLE_SIZES
            .into_iter()
            .find(|&s| Table::widths(&rows, s).1)
            .unwrap()
    }

    /// The figure at the end of the line that starts with `label` (after spaces).
    fn figure_after<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
        text.lines()
            .filter_map(|l| l.trim_start().strip_prefix(label))
            .filter_map(|rest| rest.split_whitespace().last())
            .collect()
    }

    #[test]
    fn amounts_are_printed_from_their_exact_decimals() {
        assert_eq!(money(d("12.345678901")), "12.345678901");
        assert_eq!(money(d("12")), "12.00");
        assert_eq!(money(d("0.5000")), "0.50");
        assert_eq!(money(d("0.000000001")), "0.000000001");
        assert_eq!(money(d("-1.5")), "-1.50");
        assert_eq!(money(d("1234567.89")), "1234567.89");
        assert_eq!(quantity(d("1000")), "1000");
        assert_eq!(quantity(d("2.50")), "2.5");
        assert_eq!(percent(d("12.50")), "12.5%");
        assert_eq!(percent(Decimal::ZERO), "0%");
    }

    #[test]
    fn times_are_utc_and_as_short_as_they_are_exact() {
        let t = |ms| Time(Timestamp(ms));
        assert_eq!(instant(t(JUNE)), "2026-06-01");
        assert_eq!(instant(t(JUNE + 90 * 60_000)), "2026-06-01 01:30");
        assert_eq!(instant(t(JUNE + 5_000)), "2026-06-01 00:00:05");
        assert_eq!(instant(t(JUNE + 5_250)), "2026-06-01 00:00:05.250");
        assert_eq!(period(t(JUNE), t(JUNE)), "2026-06-01");
        assert_eq!(
            period(t(JUNE), t(JUNE + DAY)),
            "2026-06-01 \u{2013} 2026-06-02"
        );
        assert_eq!(date(t(JUNE + DAY - 1)), "2026-06-01");
    }

    #[test]
    fn text_is_winansi_and_wraps_and_shortens_within_its_width() {
        assert_eq!(encode("Müller – 5 €"), b"M\xfcller \x96 5 \x80");
        assert_eq!(encode("東京\tx"), b"?? x");
        // "Hello" in Helvetica: 722 + 556 + 222 + 222 + 556 = 2278 thousandths.
        assert_eq!(width("Hello", Font::Regular, 10.0), 22.78);
        let lines = wrap(
            "1 Main St\nSpringfield Springfield",
            Font::Regular,
            10.0,
            60.0,
        );
        assert_eq!(lines, ["1 Main St", "Springfield", "Springfield"]);
        for l in wrap(&"x".repeat(100), Font::Regular, 10.0, 60.0) {
            assert!(width(&l, Font::Regular, 10.0) <= 60.0, "{l}");
        }
        let short = shorten("fal-ai/a-very-long-endpoint-id", Font::Regular, 10.0, 80.0);
        assert!(short.ends_with("...") && width(&short, Font::Regular, 10.0) <= 80.0);
        assert_eq!(shorten("fal-ai/x", Font::Regular, 10.0, 80.0), "fal-ai/x");
    }

    #[test]
    fn labels_follow_the_json_names() {
        assert_eq!(label(&InvoiceKindView::TopUp), "Top-up");
        assert_eq!(label(&InvoiceStatusView::Paid), "Paid");
        assert_eq!(label(&"credit_note"), "Credit note");
    }

    #[test]
    fn a_few_lines_fit_one_page_in_full_size_type() {
        let inv = usage_invoice(3);
        // Its endpoint ids are too long for 9 pt beside the other columns; nothing shrinks it
        // further for its height.
        assert_eq!(widest_fit(&inv), 8.5);
        assert_eq!(fitted(&inv).size, 8.5);
        let mut short = usage_invoice(3);
        for l in &mut short.lines {
            l.endpoint_id = Some("fal-ai/flux/dev".into());
            l.description = "fal-ai/flux/dev".into();
        }
        assert_eq!(fitted(&short).size, TABLE_SIZES[0]);
        let pdf = render(&inv);
        assert!(pdf.starts_with(b"%PDF-"));
        let text = pdftotext(&pdf);
        assert!(text.contains("Page 1 of 1"), "{text}");
        // 1..=3 images at 0.025 with 10% off: 0.15 - 0.015 = 0.135.
        assert_eq!(figure_after(&text, "Subtotal"), ["0.15"]);
        assert_eq!(figure_after(&text, "Discount"), ["-0.015"]);
        assert_eq!(figure_after(&text, "Total (USD)"), ["0.135"]);
        for needle in [
            "TG-2026-000042",
            "Example AI Inc.",
            "Springfield, 12345",
            "billing@example.com",
            "Tax ID: US12-3456789",
            "acme",
            "OPEN",
            "2026-06-01 \u{2013} 2026-07-01",
            "fal-ai/model-002/text-to-image",
        ] {
            assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
        }
    }

    #[test]
    fn a_usage_invoice_of_many_lines_shrinks_its_type_then_continues_on_further_pages() {
        // Up to a page's worth, the type shrinks and the invoice stays on one page.
        let mut sizes = vec![];
        let mut n = 1;
        loop {
            let inv = usage_invoice(n);
            let text = pdftotext(&render(&inv));
            if !text.contains("Page 1 of 1") {
                break;
            }
            sizes.push(fitted(&inv).size);
            n += 4;
        }
        assert!(n > 30, "a page holds more than 30 lines, only {n} fit");
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        assert_eq!(sizes.first(), Some(&widest_fit(&usage_invoice(1))));
        assert_eq!(sizes.last(), Some(&TABLE_SIZES[TABLE_SIZES.len() - 1]));

        // 150 lines: several pages, each line once and in order, the totals on the last.
        let inv = usage_invoice(150);
        assert_eq!(fitted(&inv).size, TABLE_SIZES[TABLE_SIZES.len() - 1]);
        let pdf = render(&inv);
        let text = pdftotext(&pdf);
        let pages: Vec<&str> = text
            .split('\u{c}')
            .filter(|p| !p.trim().is_empty())
            .collect();
        assert!(pages.len() >= 3, "{} pages:\n{text}", pages.len());
        for (i, page) in pages.iter().enumerate() {
            let footer = format!("Page {} of {}", i + 1, pages.len());
            assert!(page.contains(&footer), "page {i} lacks `{footer}`:\n{page}");
            assert!(
                page.contains("Line total (USD)"),
                "page {i} lacks the table's head"
            );
        }
        let mut at = 0;
        for (i, line) in inv.lines.iter().enumerate() {
            let endpoint = format!("fal-ai/model-{i:03}/text-to-image");
            let row = text[at..]
                .lines()
                .find(|l| l.contains(&endpoint))
                .unwrap_or_else(|| panic!("line {i} ({endpoint}) missing after offset {at}"));
            assert_eq!(text.matches(&endpoint).count(), 1, "{endpoint}");
            assert_eq!(
                row.split_whitespace().nth(5),
                Some(money(line.cost_total.0).as_str()),
                "{row}"
            );
            at = text.find(&endpoint).unwrap();
        }
        let last = pages.last().unwrap();
        // Σ (i+1) for i < 150 = 11325 images: 283.125 USD, 28.3125 off, 254.8125 due.
        assert_eq!(figure_after(last, "Subtotal"), ["283.125"]);
        assert_eq!(figure_after(last, "Discount"), ["-28.3125"]);
        assert_eq!(figure_after(last, "Total (USD)"), ["254.8125"]);
        assert_eq!(money(inv.total.0), "254.8125");
        // The same invoice gives the same bytes.
        assert_eq!(render(&inv), pdf);
    }

    #[test]
    fn without_an_issuer_the_block_says_so() {
        let mut inv = usage_invoice(1);
        inv.issuer = None;
        let text = pdftotext(&render(&inv));
        assert!(text.contains("Issuer not set"), "{text}");
    }
}
