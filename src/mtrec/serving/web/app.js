"use strict";
// The mtrec explorer: plain JavaScript over the service's own JSON endpoints, no build step.
// Every value from the service or the address bar reaches the page as text (textContent, attribute
// values), never as markup: a title holding <script> is shown, not run.

const $ = (id) => document.getElementById(id);

const DEFAULT_RATINGS_STEP = 0.5;
const SUGGESTIONS = 8;
const EXACT_AMONG = 50; // titles searched for the one typed exactly
const SIMILAR = 10;

const state = {
  model: null,
  picked: [], // the new user's titles: {item, title, rating (null: watched)}
  tickets: {}, // per panel, the latest request: an older answer arriving late is dropped
  opener: null, // what opened the item dialog, to give focus back to
};

class ServiceError extends Error {}

/** The JSON answer of the service at `path`; a ServiceError with a message fit for the page otherwise. */
async function api(path, options) {
  let response;
  let body;
  try {
    response = await fetch(path, options);
    body = await response.json();
  } catch (error) {
    if (response === undefined || response.ok) {
      throw new ServiceError("The service did not answer: is mtrec serve still running?");
    }
    body = null;
  }
  if (!response.ok) throw new ServiceError(problem(response.status, body));
  return body;
}

/** What a refused request's body says, in one line. */
function problem(status, body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((entry) => entry.msg).join("; ");
  return `The service answered HTTP ${status}.`;
}

/** A new ticket for `panel`; `isLatest(panel, ticket)` says whether no later request was made since. */
function ticket(panel) {
  state.tickets[panel] = (state.tickets[panel] || 0) + 1;
  return state.tickets[panel];
}

function isLatest(panel, mine) {
  return state.tickets[panel] === mine;
}

/** Show `text` in the message line `id`; errors are styled as such. */
function say(id, text, kind = "info") {
  const element = $(id);
  element.textContent = text;
  element.className = `message ${kind}`;
}

/** Fetch `path` for `panel`, then `render` its answer, or say what went wrong in `messageId` and clear `tableId`. */
async function load(panel, path, messageId, tableId, render, options) {
  const mine = ticket(panel);
  say(messageId, "Loading…");
  try {
    const body = await api(path, options);
    if (isLatest(panel, mine)) render(body);
  } catch (error) {
    if (!isLatest(panel, mine)) return;
    say(messageId, error instanceof ServiceError ? error.message : `Unexpected answer: ${error}`, "error");
    if (tableId) $(tableId).replaceChildren();
  }
}

// ---------------------------------------------------------------- tables of items

function fixed(value, digits) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

const COLUMNS = {
  rank: ["#", (row) => String(row.rank)],
  title: ["Title and genres", (row) => titleAndGenres(row)],
  given: ["Their rating", (row) => (row.given === null ? "watched" : fixed(row.given, 1))],
  watch_score: ["Watch score", (row) => fixed(row.watch_score, 3)],
  rating: ["Predicted rating", (row) => fixed(row.rating, 2)],
  similarity: ["Similarity", (row) => fixed(row.similarity, 3)],
  num_ratings: ["Popularity", (row) => row.num_ratings.toLocaleString("en")],
};

/** A table of `rows` with the named `columns`; each cell also carries its header, for narrow screens. */
function table(rows, columns, caption) {
  const element = document.createElement("table");
  const head = element.createCaption();
  head.textContent = caption;
  const header = element.createTHead().insertRow();
  for (const name of columns) {
    const cell = document.createElement("th");
    cell.scope = "col";
    cell.textContent = COLUMNS[name][0];
    header.append(cell);
  }
  const body = element.createTBody();
  for (const row of rows) {
    const line = body.insertRow();
    for (const name of columns) {
      const [label, value] = COLUMNS[name];
      const cell = line.insertCell();
      cell.className = `column-${name}`;
      cell.dataset.label = label;
      cell.append(value(row));
    }
  }
  return element;
}

function titleAndGenres(row) {
  const genres = document.createElement("span");
  genres.className = "genres";
  genres.textContent = row.genres.length ? row.genres.join(", ") : "no genres";
  const cell = document.createDocumentFragment();
  cell.append(itemButton(row), genres);
  return cell;
}

function itemButton(row) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "item-link";
  button.textContent = row.title === null ? `item ${row.item}` : row.title;
  button.addEventListener("click", () => openItem(row, button));
  return button;
}

// ---------------------------------------------------------------- filters shared by the lists

function filters() {
  const k = Math.min(100, Math.max(1, Math.round(Number($("k-input").value)) || 10));
  $("k-input").value = String(k);
  return { k, genre: $("genre-select").value };
}

function listQuery(extra = {}) {
  const { k, genre } = filters();
  const query = new URLSearchParams({ k: String(k), ...extra });
  if (genre) query.set("genre", genre);
  return query;
}

// ---------------------------------------------------------------- a known user

function showUser(event) {
  if (event) event.preventDefault();
  const user = $("user-input").value.trim();
  if (!user || user.includes("/")) {  // a "/" would split the address of the user's lists
    say("history-message", user ? `User ids holding “/” cannot be looked up: ${user}` : "Enter a user id.", "error");
    return Promise.resolve();
  }
  const address = new URL(window.location.href);
  address.searchParams.set("user", user);
  window.history.replaceState(null, "", address);
  const path = `users/${encodeURIComponent(user)}`;
  const seen = $("include-seen").checked;
  return Promise.all([
    load("history", `${path}/history?${listQuery()}`, "history-message", "history-table", renderHistory),
    load("recommendations", `${path}/recommendations?${listQuery({ exclude_seen: String(!seen) })}`,
      "recommendations-message", "recommendations-table", renderRecommendations),
  ]);
}

function renderHistory(body) {
  const genre = $("genre-select").value;
  const place = $("history-table");
  if (body.items.length === 0) {
    place.replaceChildren();
    const text = body.num_rated === 0
      ? `User ${body.user} has no rated items in the training data.`
      : `None of the ${body.num_rated} items user ${body.user} rated is ${genre}.`;
    say("history-message", text);
    return;
  }
  const unknown = body.ratings_known ? "" : " (this model file does not keep their ratings)";
  say("history-message", `${body.items.length} of the ${body.num_rated} items user ${body.user} rated${unknown}.`);
  const columns = ["rank", "title", "given", "watch_score", "rating", "num_ratings"];
  place.replaceChildren(table(body.items, columns, `Items user ${body.user} rated, best first`));
}

function renderRecommendations(body) {
  const place = $("recommendations-table");
  const shown = body.items.length;
  let text;
  if (body.cold_start) {
    text = `User ${body.user} is not in the training data: these are the ${shown} most-rated items.`;
  } else {
    text = `The top ${shown} for user ${body.user}, seen items ${body.exclude_seen ? "left out" : "included"}.`;
  }
  say("recommendations-message", shown ? text : "No item passes the filters.");
  const columns = ["rank", "title", "watch_score", "rating", "num_ratings"];
  place.replaceChildren(...(shown ? [table(body.items, columns, `Recommendations for user ${body.user}`)] : []));
}

// ---------------------------------------------------------------- a new user

let suggestTimer;
let foldInTimer;

function suggestSoon() {
  clearTimeout(suggestTimer);
  suggestTimer = setTimeout(suggest, 150);
}

async function suggest() {
  const text = $("title-input").value.trim();
  if (text.length < 2) {
    hideSuggestions();
    say("title-message", "");
    return;
  }
  const mine = ticket("suggest");
  try {
    const body = await api(`items?${new URLSearchParams({ query: text, k: String(SUGGESTIONS) })}`);
    if (isLatest("suggest", mine)) showSuggestions(body.items, text);
  } catch (error) {
    if (isLatest("suggest", mine)) say("title-message", error.message, "error");
  }
}

function showSuggestions(items, text) {
  const list = $("suggestions");
  if (items.length === 0) {
    hideSuggestions();
    say("title-message", `No title in the catalogue matches “${text}”.`, "error");
    return;
  }
  say("title-message", `${items.length} matching ${items.length === 1 ? "title" : "titles"}: pick one (arrow keys or click).`);
  list.replaceChildren(...items.map((item) => {
    const entry = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = item.title === null ? `item ${item.item}` : item.title;
    const genres = document.createElement("span");
    genres.className = "muted";
    genres.textContent = item.genres.length ? ` ${item.genres.join(", ")}` : "";
    button.append(genres);
    button.addEventListener("click", () => addPick(item));
    entry.append(button);
    return entry;
  }));
  list.hidden = false;
  $("title-input").setAttribute("aria-expanded", "true");
}

function hideSuggestions() {
  $("suggestions").hidden = true;
  $("suggestions").replaceChildren();
  $("title-input").setAttribute("aria-expanded", "false");
}

/** Add the typed title: the one the catalogue names exactly, or the only match; otherwise say what matched. */
async function addTyped(event) {
  event.preventDefault();
  clearTimeout(suggestTimer);
  const text = $("title-input").value.trim();
  if (!text) {
    say("title-message", "Type a title first.", "error");
    return;
  }
  const mine = ticket("suggest");
  try {
    const body = await api(`items?${new URLSearchParams({ query: text, k: String(EXACT_AMONG) })}`);
    if (!isLatest("suggest", mine)) return;
    const wanted = text.toLowerCase();
    const exact = body.items.find((item) => String(item.item) === text
      || (item.title !== null && [item.title, item.title.replace(/\s*\(\d{4}\)\s*$/, "")].some((t) => t.toLowerCase() === wanted)));
    if (exact || body.items.length === 1) {
      addPick(exact || body.items[0]);
    } else if (body.items.length === 0) {
      hideSuggestions();
      say("title-message", `No title in the catalogue matches “${text}”.`, "error");
    } else {
      showSuggestions(body.items.slice(0, SUGGESTIONS), text);
      say("title-message", `Several titles match “${text}”: pick one.`);
    }
  } catch (error) {
    if (isLatest("suggest", mine)) say("title-message", error.message, "error");
  }
}

function addPick(item) {
  const title = item.title === null ? `item ${item.item}` : item.title;
  hideSuggestions();
  $("title-input").value = "";
  $("title-input").focus();
  if (state.picked.some((pick) => pick.item === item.item)) {
    say("title-message", `${title} is already in their list.`);
    return;
  }
  state.picked.push({ item: item.item, title, rating: null });
  say("title-message", `Added ${title}.`);
  renderPicked();
  foldInSoon();
}

/** The ratings a title can be given: the model's rating scale, best first, in steps of one (or a half). */
function ratingChoices() {
  const scale = state.model && state.model.rating_scale;
  if (!scale) return [];
  const [low, high] = scale;
  const step = Number.isInteger(low) && Number.isInteger(high) ? 1 : DEFAULT_RATINGS_STEP;
  const choices = [];
  for (let value = high; value >= low - 1e-9; value -= step) choices.push(Number(value.toFixed(2)));
  return choices;
}

function renderPicked() {
  const list = $("picked");
  if (state.picked.length === 0) {
    list.replaceChildren();
    say("picked-message", "No titles yet: add one above.");
    return;
  }
  say("picked-message", `${state.picked.length} ${state.picked.length === 1 ? "title" : "titles"}.`);
  list.replaceChildren(...state.picked.map((pick, position) => {
    const entry = document.createElement("li");
    const name = document.createElement("span");
    name.className = "pick-title";
    name.textContent = pick.title;
    const label = document.createElement("label");
    const select = document.createElement("select");
    select.id = `pick-rating-${position}`;
    label.htmlFor = select.id;
    label.textContent = "Rating";
    select.setAttribute("aria-label", `Rating of ${pick.title}`);
    for (const value of [null, ...ratingChoices()]) {
      const option = document.createElement("option");
      option.value = value === null ? "" : String(value);
      option.textContent = value === null ? "watched" : String(value);
      option.selected = value === pick.rating;
      select.append(option);
    }
    select.addEventListener("change", () => {
      pick.rating = select.value === "" ? null : Number(select.value);
      foldInSoon();
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove ${pick.title}`);
    remove.addEventListener("click", () => {
      state.picked.splice(position, 1);
      renderPicked();
      $("title-input").focus();
      foldInSoon();
    });
    entry.append(name, label, select, remove);
    return entry;
  }));
}

function foldInSoon() {
  clearTimeout(foldInTimer);
  foldInTimer = setTimeout(foldIn, 200);
}

function foldIn() {
  if (state.picked.length === 0) {
    ticket("new");
    $("new-table").replaceChildren();
    say("new-message", "Add a title they watched to see their recommendations.");
    return Promise.resolve();
  }
  const { k, genre } = filters();
  const body = {
    history: state.picked.map((pick) => ({ item: pick.item, rating: pick.rating })),
    k,
    genres: genre ? [genre] : [],
  };
  const options = { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  return load("new", "recommendations", "new-message", "new-table", renderFoldIn, options);
}

function renderFoldIn(body) {
  const shown = body.items.length;
  say("new-message", shown
    ? `The top ${shown} from the ${state.picked.length} ${state.picked.length === 1 ? "title" : "titles"} they watched.`
    : "No item passes the filters.");
  const columns = ["rank", "title", "watch_score", "rating", "num_ratings"];
  $("new-table").replaceChildren(...(shown ? [table(body.items, columns, "Recommendations for the new user")] : []));
}

// ---------------------------------------------------------------- one item: similar items, predicted ratings

function openItem(row, opener) {
  const dialog = $("item-dialog");
  state.opener = opener;
  $("item-heading").textContent = row.title === null ? `item ${row.item}` : row.title;
  const genres = row.genres.length ? row.genres.join(", ") : "no genres";
  $("item-facts").textContent = `Item ${row.item} · ${genres} · ${row.num_ratings.toLocaleString("en")} training ratings`;
  if (!dialog.open) dialog.showModal();
  $("item-heading").focus();
  const path = `items/${encodeURIComponent(row.item)}`;
  load("similar", `${path}/similar?k=${SIMILAR}`, "similar-message", "similar-table", (body) => {
    say("similar-message", `The ${body.items.length} items nearest to it in the model's item space.`);
    const columns = ["rank", "title", "similarity", "num_ratings"];
    $("similar-table").replaceChildren(table(body.items, columns, "Similar items"));
  });
  load("distribution", `${path}/ratings?bins=${distributionBins()}`, "distribution-message", "distribution", renderDistribution);
}

function distributionBins() {
  const scale = state.model && state.model.rating_scale;
  return scale ? Math.min(20, Math.max(2, Math.round((scale[1] - scale[0]) / DEFAULT_RATINGS_STEP))) : 10;
}

function renderDistribution(body) {
  say("distribution-message", `Mean ${fixed(body.mean, 2)} over ${body.users.toLocaleString("en")} users.`);
  const most = Math.max(1, ...body.counts);
  const list = document.createElement("ol");
  list.className = "bars";
  body.counts.forEach((count, bin) => {
    const entry = document.createElement("li");
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = `${fixed(body.edges[bin], 1)}–${fixed(body.edges[bin + 1], 1)}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${(100 * count) / most}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "bar-count";
    value.textContent = count.toLocaleString("en");
    entry.append(label, bar, value);
    list.append(entry);
  });
  $("distribution").replaceChildren(list);
}

// ---------------------------------------------------------------- the model

function fact(list, name, value) {
  const term = document.createElement("dt");
  term.textContent = name;
  const detail = document.createElement("dd");
  detail.textContent = value;
  list.append(term, detail);
}

function facts(heading, entries) {
  const block = document.createElement("div");
  const title = document.createElement("h3");
  title.textContent = heading;
  const list = document.createElement("dl");
  for (const [name, value] of entries) fact(list, name, value);
  block.append(title, list);
  return block;
}

function plain(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number" && !Number.isInteger(value)) return String(Number(value.toPrecision(4)));
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

/** Metrics in order: the validation set's (what chose the epoch), then the test set's, each by name. */
function validFirst([a], [b]) {
  return (b.startsWith("valid") - a.startsWith("valid")) || a.localeCompare(b);
}

function renderModel(model) {
  const selected = (model.metrics && model.metrics.selected) || {};
  const scale = model.rating_scale ? `${model.rating_scale[0]} to ${model.rating_scale[1]}` : "none";
  $("model-summary").textContent = `${model.dataset}: ${model.num_users.toLocaleString("en")} users, `
    + `${model.num_items.toLocaleString("en")} items · epoch ${plain(selected.epoch)} of ${model.epochs_trained}`;
  const data = facts("The data", [
    ["Data set", model.dataset],
    ["Users", model.num_users.toLocaleString("en")],
    ["Items", model.num_items.toLocaleString("en")],
    ["Training ratings", model.train_ratings.toLocaleString("en")],
    ["Rating scale", scale],
    ["Ratings learned", model.has_ratings ? "yes" : "no"],
  ]);
  const selection = model.metrics.selection ? [["Chosen by", plain(model.metrics.selection)]] : [];
  const epoch = facts("The selected epoch", [
    ["Epoch", `${plain(selected.epoch)} of ${model.epochs_trained} trained`],
    ...selection,
    ...Object.entries(selected).filter(([name]) => name !== "epoch").sort(validFirst).map(([name, value]) => [name, plain(value)]),
  ]);
  const config = facts("The configuration", Object.entries(model.config).map(([name, value]) => [name, plain(value)]));
  $("model-facts").replaceChildren(data, epoch, config);
  const select = $("genre-select");
  for (const genre of model.genres) {
    const option = document.createElement("option");
    option.value = genre;
    option.textContent = genre;
    select.append(option);
  }
}

// ---------------------------------------------------------------- keyboard and start

function moveInSuggestions(event) {
  const buttons = [...$("suggestions").querySelectorAll("button")];
  const at = buttons.indexOf(document.activeElement);
  if (event.key === "ArrowDown" && buttons.length) {
    event.preventDefault();
    buttons[Math.min(at + 1, buttons.length - 1)].focus();
  } else if (event.key === "ArrowUp" && at >= 0) {
    event.preventDefault();
    (at === 0 ? $("title-input") : buttons[at - 1]).focus();
  } else if (event.key === "Escape" && !$("suggestions").hidden) {
    event.preventDefault();
    hideSuggestions();
    $("title-input").focus();
  }
}

function refreshLists() {
  const lists = [foldIn()];
  if ($("user-input").value.trim()) lists.push(showUser());
  return Promise.all(lists);
}

async function start() {
  $("user-form").addEventListener("submit", showUser);
  $("title-form").addEventListener("submit", addTyped);
  $("title-input").addEventListener("input", suggestSoon);
  $("title-input").addEventListener("keydown", moveInSuggestions);
  $("suggestions").addEventListener("keydown", moveInSuggestions);
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    refreshLists();
  });
  $("k-input").addEventListener("change", refreshLists);
  $("genre-select").addEventListener("change", refreshLists);
  $("include-seen").addEventListener("change", () => $("user-input").value.trim() && showUser());
  $("item-close").addEventListener("click", () => $("item-dialog").close());
  $("item-dialog").addEventListener("close", () => state.opener && state.opener.isConnected && state.opener.focus());
  renderPicked();
  say("new-message", "Add a title they watched to see their recommendations.");
  try {
    state.model = await api("model");
  } catch (error) {
    $("model-summary").textContent = "The model could not be read.";
    say("model-message", error.message, "error");
    document.body.dataset.ready = "true";
    return;
  }
  renderModel(state.model);
  const asked = new URLSearchParams(window.location.search).get("user");
  $("user-input").value = asked === null ? String(state.model.example_user) : asked;
  await showUser();
  document.body.dataset.ready = "true";
}

start();
