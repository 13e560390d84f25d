//! The effectiveness report as an SVG dashboard (plotters): one horizontal bar per flow with
//! its numbers written beside it, pre-arrival lead times per agreement and partner, and AEO
//! lookup hit rates. Numbers are written out because volumes differ by orders of magnitude
//! (one refusal next to thousands of declarations): a bar alone would hide the small ones, and
//! a refusal is what a manager most needs to see.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{ReportError, date, human};
use crate::proto::v1::{EffectivenessReport, FlowReport};

const WIDTH: i32 = 1200;
/// Right edge of the label column.
const LABEL_RIGHT: i32 = 370;
const BAR_X: i32 = 380;
const BAR_W: i32 = 440;
/// Where the numbers beside a bar start.
const NOTE_X: i32 = BAR_X + BAR_W + 12;
const ROW_H: i32 = 24;
const HEADING_H: i32 = 44;
/// A bar that stands for at least one message is at least this wide.
const MIN_BAR: i32 = 3;

const OK: RGBColor = RGBColor(46, 160, 67);
const REFUSED: RGBColor = RGBColor(207, 34, 46);
const LEAD: RGBColor = RGBColor(84, 110, 220);
const GREY: RGBColor = RGBColor(110, 110, 110);
const TRACK: RGBColor = RGBColor(238, 238, 238);
const LEAD_RANGE: RGBColor = RGBColor(178, 190, 240);

/// What one row of the flows section shows.
fn flow_label(f: &FlowReport) -> String {
    format!(
        "{} {} {}",
        f.message_type.trim_start_matches("dccf.v1."),
        if f.direction == "sent" { "→" } else { "←" },
        f.partner
    )
}

/// Messages that went through: delivered (sent) or accepted (received).
fn passed(f: &FlowReport) -> u64 {
    if f.direction == "sent" {
        f.delivered
    } else {
        f.messages
    }
}

/// Width of `n` on a bar scaled to `max`: at least [`MIN_BAR`] for anything above zero.
fn bar(n: u64, max: u64) -> i32 {
    if n == 0 {
        return 0;
    }
    let w = (n as f64 / max.max(1) as f64 * f64::from(BAR_W)).round() as i32;
    w.clamp(MIN_BAR, BAR_W)
}

/// The report as an SVG dashboard.
pub fn svg(r: &EffectivenessReport) -> Result<String, ReportError> {
    let leads: Vec<&FlowReport> = r
        .flows
        .iter()
        .filter(|f| f.lead_time_ms.is_some())
        .collect();
    let agreements = {
        let mut a: Vec<&str> = r.flows.iter().map(|f| f.agreement_id.as_str()).collect();
        a.dedup();
        a.len()
    };
    let rows = |n: usize| i32::try_from(n.max(1)).unwrap_or(i32::MAX / 4) * ROW_H;
    let height = 80
        + HEADING_H
        + rows(r.flows.len() + agreements)
        + HEADING_H
        + rows(leads.len())
        + HEADING_H
        + rows(r.aeo.len())
        + 50;
    let mut out = String::new();
    {
        let area =
            SVGBackend::with_string(&mut out, (WIDTH as u32, height as u32)).into_drawing_area();
        let mut page = Page { area: &area, y: 0 };
        page.fill()?;
        page.title(r)?;
        page.flows(r)?;
        page.lead_times(&leads)?;
        page.aeo(r)?;
        page.footer()?;
        area.present().map_err(chart_err)?;
    }
    Ok(out)
}

fn chart_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Chart(e.to_string())
}

/// The drawing area and the next free line.
struct Page<'a, 'b> {
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    y: i32,
}

impl Page<'_, '_> {
    fn fill(&mut self) -> Result<(), ReportError> {
        self.area.fill(&WHITE).map_err(chart_err)
    }

    fn text(
        &self,
        s: &str,
        (x, y): (i32, i32),
        size: u32,
        color: &RGBColor,
        h: HPos,
    ) -> Result<(), ReportError> {
        let style = ("sans-serif", size)
            .into_font()
            .color(color)
            .pos(Pos::new(h, VPos::Center));
        self.area
            .draw(&Text::new(s.to_owned(), (x, y), style))
            .map_err(chart_err)
    }

    fn rect(
        &self,
        x0: i32,
        y0: i32,
        x1: i32,
        y1: i32,
        color: &RGBColor,
    ) -> Result<(), ReportError> {
        self.area
            .draw(&Rectangle::new([(x0, y0), (x1, y1)], color.filled()))
            .map_err(chart_err)
    }

    fn heading(&mut self, s: &str, legend: &str) -> Result<(), ReportError> {
        self.y += HEADING_H;
        self.text(s, (20, self.y - 14), 18, &BLACK, HPos::Left)?;
        self.text(legend, (WIDTH - 20, self.y - 14), 13, &GREY, HPos::Right)
    }

    /// The middle of the next row (and moves past it).
    fn row(&mut self) -> i32 {
        self.y += ROW_H;
        self.y - ROW_H / 2
    }

    /// Starts a row: its label right-aligned before the bar, and the bar's grey track; returns
    /// the row's middle.
    fn labelled_row(&mut self, label: &str) -> Result<i32, ReportError> {
        let y = self.row();
        self.text(label, (LABEL_RIGHT, y), 14, &BLACK, HPos::Right)?;
        self.rect(BAR_X, y - 8, BAR_X + BAR_W, y + 8, &TRACK)?;
        Ok(y)
    }

    /// The numbers beside a row's bar.
    fn note(&self, s: &str, y: i32) -> Result<(), ReportError> {
        self.text(s, (NOTE_X, y), 14, &BLACK, HPos::Left)
    }

    fn empty(&mut self, s: &str) -> Result<(), ReportError> {
        let y = self.row();
        self.text(s, (BAR_X, y), 14, &GREY, HPos::Left)
    }

    fn title(&mut self, r: &EffectivenessReport) -> Result<(), ReportError> {
        self.text(
            &format!("DCCF exchange with partners — {}", r.admin),
            (20, 30),
            24,
            &BLACK,
            HPos::Left,
        )?;
        self.text(
            &format!(
                "{} to {} (UTC) · {} ledger entries in the period",
                date(r.since_ms),
                date(r.until_ms),
                r.entries_scanned
            ),
            (20, 58),
            14,
            &GREY,
            HPos::Left,
        )?;
        self.y = 70;
        Ok(())
    }

    fn flows(&mut self, r: &EffectivenessReport) -> Result<(), ReportError> {
        self.heading(
            "Messages per flow",
            "green: accepted or delivered · red: refused or given up",
        )?;
        if r.flows.is_empty() {
            return self.empty("no messages in this period");
        }
        let max = r
            .flows
            .iter()
            .map(|f| passed(f) + f.rejections.values().sum::<u64>())
            .max()
            .unwrap_or(1);
        let mut current = None;
        for f in &r.flows {
            if current != Some(f.agreement_id.as_str()) {
                current = Some(f.agreement_id.as_str());
                let y = self.row();
                self.text(
                    &format!("agreement {}", f.agreement_id),
                    (20, y),
                    13,
                    &GREY,
                    HPos::Left,
                )?;
            }
            let y = self.labelled_row(&flow_label(f))?;
            let ok = bar(passed(f), max);
            let refused_n: u64 = f.rejections.values().sum();
            let refused = bar(refused_n, max);
            self.rect(BAR_X, y - 8, BAR_X + ok, y + 8, &OK)?;
            self.rect(BAR_X + ok, y - 8, BAR_X + ok + refused, y + 8, &REFUSED)?;
            let note = if f.direction == "sent" {
                format!("{} sent, {} delivered", f.messages, f.delivered)
            } else {
                format!("{} accepted", f.messages)
            };
            self.note(&note, y)?;
            if refused_n > 0 {
                let mut reasons: Vec<_> = f.rejections.iter().collect();
                reasons.sort();
                let text = match reasons.as_slice() {
                    [(reason, _)] => format!("{refused_n} refused ({reason})"),
                    _ => format!(
                        "{refused_n} refused: {}",
                        reasons
                            .iter()
                            .map(|(k, n)| format!("{k} {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                self.text(&text, (NOTE_X + 150, y), 14, &REFUSED, HPos::Left)?;
            }
        }
        Ok(())
    }

    fn lead_times(&mut self, leads: &[&FlowReport]) -> Result<(), ReportError> {
        self.heading(
            "Pre-arrival lead time: how long before arrival the data was here",
            "bar: shortest to longest · mark: median",
        )?;
        if leads.is_empty() {
            return self.empty("no pre-arrival declarations received in this period");
        }
        let pcts: Vec<_> = leads.iter().filter_map(|f| f.lead_time_ms).collect();
        let lo = pcts.iter().map(|p| p.min).min().unwrap_or(0).min(0);
        let hi = pcts.iter().map(|p| p.max).max().unwrap_or(1).max(lo + 1);
        let x = |ms: i64| BAR_X + ((ms - lo) as f64 / (hi - lo) as f64 * f64::from(BAR_W)) as i32;
        for (f, p) in leads.iter().zip(&pcts) {
            let y =
                self.labelled_row(&format!("{} ← {} ({})", f.agreement_id, f.partner, p.count))?;
            let (x0, x1) = (x(p.min), x(p.max).max(x(p.min) + MIN_BAR));
            self.rect(x0, y - 6, x1, y + 6, &LEAD_RANGE)?;
            let m = x(p.p50);
            self.rect(m - 2, y - 10, m + 2, y + 10, &LEAD)?;
            self.note(
                &format!(
                    "median {}, p90 {}, p99 {}, shortest {}",
                    human(p.p50),
                    human(p.p90),
                    human(p.p99),
                    human(p.min)
                ),
                y,
            )?;
        }
        Ok(())
    }

    fn aeo(&mut self, r: &EffectivenessReport) -> Result<(), ReportError> {
        self.heading("AEO status lookups", "bar: share of operators found")?;
        if r.aeo.is_empty() {
            return self.empty("no AEO lookups in this period");
        }
        for a in &r.aeo {
            let what = match a.kind.as_str() {
                "mirror" => format!("from the mirror of {}", a.partner),
                "online" => format!("asked {} online", a.partner),
                "answered" => format!("answered for {}", a.partner),
                other => format!("{other} {}", a.partner),
            };
            let y = self.labelled_row(&what)?;
            let rate = if a.lookups == 0 {
                0.0
            } else {
                a.found as f64 / a.lookups as f64
            };
            self.rect(BAR_X, y - 8, BAR_X + bar(a.found, a.lookups), y + 8, &OK)?;
            self.note(
                &format!(
                    "{} lookups, {} found ({:.1} %)",
                    a.lookups,
                    a.found,
                    rate * 100.0
                ),
                y,
            )?;
        }
        Ok(())
    }

    fn footer(&mut self) -> Result<(), ReportError> {
        self.y += 30;
        self.text(
            "Aggregates from the ledger only: no payload content. `dccf-node report` (table, csv, svg).",
            (20, self.y),
            12,
            &GREY,
            HPos::Left,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{AeoLookupReport, Percentiles};

    fn report() -> EffectivenessReport {
        let flow = |t: &str, dir: &str, n: u64, refused: u64| FlowReport {
            agreement_id: "pre-arrival-nl-br-de".into(),
            message_type: format!("dccf.v1.{t}"),
            direction: dir.into(),
            partner: "NL".into(),
            messages: n,
            delivered: n,
            rejections: if refused > 0 {
                [("FLOW_NOT_ALLOWED".to_owned(), refused)].into()
            } else {
                Default::default()
            },
            latency_ms: None,
            lead_time_ms: (t == "PreArrivalDeclaration").then_some(Percentiles {
                count: n,
                p50: 16 * 86_400_000,
                p90: 17 * 86_400_000,
                p99: 18 * 86_400_000,
                min: 86_400_000,
                max: 19 * 86_400_000,
            }),
        };
        EffectivenessReport {
            admin: "BR".into(),
            since_ms: 0,
            until_ms: 86_400_000,
            entries_scanned: 2030,
            agreement_id: String::new(),
            flows: vec![
                flow("PreArrivalDeclaration", "received", 2000, 0),
                flow("AeoStatusQuery", "received", 0, 1),
                flow("RiskAlert", "sent", 1, 0),
            ],
            aeo: vec![AeoLookupReport {
                partner: "NL".into(),
                kind: "mirror".into(),
                lookups: 10,
                found: 7,
            }],
        }
    }

    #[test]
    fn every_flow_is_labelled_with_its_numbers_and_small_ones_stay_visible() {
        let s = svg(&report()).unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..100]);
        for text in [
            "PreArrivalDeclaration ← NL",
            "2000 accepted",
            "1 refused (FLOW_NOT_ALLOWED)",
            "RiskAlert → NL",
            "1 sent, 1 delivered",
            "agreement pre-arrival-nl-br-de",
            "median 16.0 d, p90 17.0 d, p99 18.0 d, shortest 24.0 h",
            "from the mirror of NL",
            "10 lookups, 7 found (70.0 %)",
        ] {
            assert!(s.contains(text), "{text} in the chart");
        }
        // One refusal next to 2000 accepted messages still has a visible red bar.
        assert!(
            s.contains(&format!("width=\"{MIN_BAR}\"")),
            "a minimum-width bar"
        );
        assert_eq!(bar(1, 2000), MIN_BAR);
        assert_eq!(bar(2000, 2000), BAR_W);
        assert_eq!(bar(0, 2000), 0);
    }

    #[test]
    fn an_empty_period_says_so_in_each_section() {
        let empty = EffectivenessReport {
            admin: "NL".into(),
            ..Default::default()
        };
        let s = svg(&empty).unwrap();
        for text in [
            "no messages in this period",
            "no pre-arrival declarations received in this period",
            "no AEO lookups in this period",
        ] {
            assert!(s.contains(text), "{text}");
        }
    }
}
