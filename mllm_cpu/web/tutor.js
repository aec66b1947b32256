// The tutor page of `mllm-cpu serve`. Plain script, no libraries, nothing fetched but this server's API.
//
// It streams /v1/chat/completions (server-sent events read from fetch), shows the reasoning dimmed in a
// <details> with a live token count, then the answer; model text is rendered to HTML by the server
// (/extras/render: markdown, LaTeX as MathML, sanitised), at most every RENDER_EVERY_MS while it
// streams, and checked again here before it enters the page. Conversations live in localStorage, the
// API key (when the server has one) in sessionStorage.
(() => {
  "use strict";

  const STORE_KEY = "mllm-cpu.tutor.conversations";
  const PREFS_KEY = "mllm-cpu.tutor.prefs";
  const API_KEY = "mllm-cpu.tutor.key";
  const RENDER_EVERY_MS = 250;
  const RENDER_LIMIT = 200000; // the server's MAX_RENDER_CHARS; the rest of a longer text stays plain
  const MAX_CONVERSATIONS = 30;
  const TASKS = ["math", "science", "python", "cpp"];
  const CODE_TASKS = ["python", "cpp"];
  const ONLY_A_BOX = /^\s*\\boxed\{[^]*\}[\s.]*$/;

  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"), status: $("status"), login: $("login"), loginForm: $("login-form"),
    keyInput: $("api-key"), loginError: $("login-error"), main: $("main"), history: $("history"),
    newConversation: $("new-conversation"), empty: $("empty"), conversation: $("conversation"),
    bar: document.querySelector("header"), ask: $("ask"), problem: $("problem"), task: $("task"), budget: $("budget"), send: $("send"), stop: $("stop"),
  };

  let apiKey = sessionStorage.getItem(API_KEY) || "";
  let connected = false;
  let streaming = null; // {controller, stopped}
  let store = loadStore();

  // ---- the API ----

  class KeyNeeded extends Error {}

  function headers(json) {
    const result = {};
    if (json) result["Content-Type"] = "application/json";
    if (apiKey) result["Authorization"] = "Bearer " + apiKey;
    return result;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && body.error && typeof body.error.message === "string") return body.error.message;
    } catch (_) { /* not JSON */ }
    return "the board answered " + response.status;
  }

  async function call(path, body, signal) {
    const response = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
    if (response.status === 401) {
      askForKey(apiKey ? "That key was not accepted. Check it and try again." : "");
      throw new KeyNeeded("the board needs its key");
    }
    return response;
  }

  async function callJSON(path, body) {
    const response = await call(path, body);
    if (!response.ok) throw new Error(await errorText(response));
    return response.json();
  }

  // ---- the key ----

  function askForKey(message) {
    connected = false;
    if (message) {
      apiKey = "";
      sessionStorage.removeItem(API_KEY);
    }
    ui.loginError.textContent = message;
    ui.login.hidden = false;
    for (const part of [ui.bar, ui.main, ui.ask]) part.inert = true;
    setStatus("Waiting for the key");
    ui.keyInput.focus();
  }

  ui.loginForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = ui.keyInput.value.trim();
    if (!key) return;
    apiKey = key;
    sessionStorage.setItem(API_KEY, key);
    ui.loginError.textContent = "";
    connect();
  });

  async function connect() {
    setStatus("Connecting…");
    let models;
    try {
      models = await callJSON("v1/models");
    } catch (error) {
      if (!(error instanceof KeyNeeded)) setStatus("Cannot reach the board: " + error.message);
      return;
    }
    connected = true;
    const fromLogin = !ui.login.hidden;
    ui.login.hidden = true;
    for (const part of [ui.bar, ui.main, ui.ask]) part.inert = false;
    ui.keyInput.value = "";
    if (fromLogin) ui.problem.focus();
    fillModels(Array.isArray(models.data) ? models.data : []);
    setStatus("Ready");
    showConversation();
  }

  function fillModels(models) {
    const chosen = prefs().model;
    ui.model.replaceChildren();
    for (const model of models) {
      if (typeof model.id !== "string") continue;
      const option = document.createElement("option");
      option.value = option.textContent = model.id;
      ui.model.append(option);
    }
    if ([...ui.model.options].some((option) => option.value === chosen)) ui.model.value = chosen;
  }

  function setStatus(text) {
    ui.status.textContent = text;
  }

  // ---- rendering ----

  const HTML_TAGS = "p br hr h1 h2 h3 h4 h5 h6 strong em s code pre blockquote ul ol li table thead tbody tr th td a span div";
  const MATH_TAGS = "math semantics annotation mrow mi mn mo ms mtext mspace mfrac msqrt mroot mstyle merror mpadded " +
    "mphantom msub msup msubsup munder mover munderover mmultiscripts mprescripts none mtable mtr mtd menclose";
  const ALLOWED = new Set((HTML_TAGS + " " + MATH_TAGS).split(" "));

  // The server sanitises; this checks again, so nothing but those tags, no event handler, style or
  // script URL enters the page even if it did not. A <template> parses without running anything.
  function safeFragment(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    const elements = [...template.content.querySelectorAll("*")];
    for (const element of elements) {
      if (!ALLOWED.has(element.localName)) {
        element.remove();
        continue;
      }
      for (const attribute of [...element.attributes]) {
        const name = attribute.name.toLowerCase();
        const unsafeLink = name === "href" && !/^(https?:|mailto:)/i.test(attribute.value.trim());
        if (name.startsWith("on") || name === "style" || name === "src" || name.includes("href") && name !== "href" ||
            unsafeLink) {
          element.removeAttribute(attribute.name);
        }
      }
    }
    return template.content;
  }

  function setHTML(element, html) {
    element.replaceChildren(safeFragment(html));
  }

  async function renderText(text, task) {
    const response = await call("extras/render", { text, task: task || null });
    if (!response.ok) throw new Error(await errorText(response));
    return response.json();
  }

  // Where the text's last complete block ends: after its last blank line outside fenced code (0: none).
  function settledEnd(text) {
    let end = 0;
    let fence = "";
    let at = 0;
    for (const line of text.split("\n")) {
      const next = at + line.length + 1;
      const marker = /^ {0,3}(`{3,}|~{3,})/.exec(line);
      if (fence) {
        if (marker && marker[1][0] === fence[0] && marker[1].length >= fence.length && !line.slice(marker[0].length).trim()) fence = "";
      } else if (marker && !(marker[1][0] === "`" && line.slice(marker[0].length).includes("`"))) {
        fence = marker[1];
      } else if (!line.trim() && next <= text.length) {
        end = next;
      }
      at = next;
    }
    return end;
  }

  // A text shown as it grows. Its complete blocks (up to a blank line) are rendered once each and kept;
  // the open block at the end is rendered again as it grows (at most every RENDER_EVERY_MS, one request
  // at a time, the latest text each time), and what came after the last render is shown as plain text.
  // So a long reasoning costs the link only its newest block per render.
  class LiveText {
    constructor(root, task, onRendered) {
      this.md = root.querySelector(".md");
      this.tail = root.querySelector(".tail");
      this.openNode = element("div", "part");
      this.md.append(this.openNode);
      this.task = task;
      this.onRendered = onRendered;
      this.text = "";
      this.settled = 0; // length of the text in kept blocks
      this.openText = ""; // the text the open node shows
      this.answers = []; // the last answer of each kept block, then of the open one
      this.openAnswer = null;
      this.timer = null;
      this.pending = null;
      this.frame = 0;
      this.last = 0;
      this.failed = false;
    }

    set(text) {
      this.text = text;
      this.failed = false;
      if (!this.frame) {
        this.frame = requestAnimationFrame(() => {
          this.frame = 0;
          this.paint();
        });
      }
      this.schedule();
    }

    paint() {
      this.tail.textContent = this.text.slice(this.settled + this.openText.length);
    }

    behind() {
      const open = this.text.slice(this.settled);
      return open !== this.openText && open.length <= RENDER_LIMIT;
    }

    schedule() {
      if (this.timer || this.pending || this.failed || !this.behind()) return;
      const wait = Math.max(0, this.last + RENDER_EVERY_MS - Date.now());
      this.timer = setTimeout(() => {
        this.timer = null;
        this.run();
      }, wait);
    }

    run() {
      this.last = Date.now();
      this.pending = this.renderNewBlocks()
        .then(() => {
          this.paint();
          const answer = this.openAnswer || [...this.answers].reverse().find((a) => a) || null;
          if (this.onRendered) this.onRendered(answer, this.md);
        })
        .catch(() => {
          this.failed = true; // shown as text; tried again when the text grows
        })
        .finally(() => {
          this.pending = null;
          this.schedule();
        });
      return this.pending;
    }

    async renderNewBlocks() {
      let open = this.text.slice(this.settled);
      let end = settledEnd(open);
      while (end > 0) {
        const complete = open.slice(0, Math.min(end, RENDER_LIMIT));
        const reply = await renderText(complete, this.task);
        const node = element("div", "part");
        setHTML(node, text(reply.html));
        this.md.insertBefore(node, this.openNode);
        this.answers.push(typeof reply.answer === "string" ? reply.answer : null);
        this.settled += complete.length;
        this.openNode.replaceChildren();
        this.openText = "";
        this.openAnswer = null;
        open = this.text.slice(this.settled);
        end = settledEnd(open);
      }
      if (open === this.openText || open.length > RENDER_LIMIT) return;
      const reply = await renderText(open, this.task);
      if (!this.text.slice(this.settled).startsWith(open)) return;
      setHTML(this.openNode, text(reply.html));
      this.openText = open;
      this.openAnswer = typeof reply.answer === "string" ? reply.answer : null;
    }

    // Render the whole text now and wait for it.
    async finish() {
      if (this.frame) {
        cancelAnimationFrame(this.frame);
        this.frame = 0;
      }
      this.paint();
      for (let round = 0; round < 4; round += 1) {
        if (this.timer) {
          clearTimeout(this.timer);
          this.timer = null;
        }
        if (this.pending) {
          await this.pending;
          continue;
        }
        if (this.failed || !this.behind()) break;
        await this.run();
      }
      if (this.timer) {
        clearTimeout(this.timer);
        this.timer = null;
      }
    }
  }

  // Copy buttons on code blocks (once each); the last block of a code task's answer is its final code.
  function decorateCode(container, task) {
    for (const pre of container.querySelectorAll("pre")) {
      if (pre.parentElement.classList.contains("code")) continue;
      const wrap = element("div", "code");
      const bar = element("div", "code-bar");
      const code = pre.querySelector("code");
      const language = code && /language-(\S+)/.exec(code.className);
      const label = element("span", "code-label", "Code" + (language ? " · " + language[1] : ""));
      const button = element("button", "", "Copy");
      button.type = "button";
      button.setAttribute("aria-label", "Copy this code");
      button.addEventListener("click", () => copy(pre.textContent, button));
      bar.append(label, button);
      pre.replaceWith(wrap);
      wrap.append(bar, pre);
    }
    const blocks = [...container.querySelectorAll(".code")];
    blocks.forEach((block, index) => {
      const final = CODE_TASKS.includes(task) && index === blocks.length - 1;
      block.classList.toggle("final", final);
      const label = block.querySelector(".code-label");
      label.textContent = label.textContent.replace(/^(Final code|Code)/, final ? "Final code" : "Code");
      block.querySelector("button").setAttribute("aria-label", final ? "Copy the final code" : "Copy this code");
    });
  }

  async function copy(text, button) {
    let done = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        done = true;
      }
    } catch (_) { /* fall back below */ }
    if (!done) {
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "hidden-label";
      document.body.append(area);
      area.select();
      try {
        done = document.execCommand("copy");
      } catch (_) {
        done = false;
      }
      area.remove();
    }
    button.textContent = done ? "Copied" : "Select and copy";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }

  // ---- conversations (this browser only) ----

  function newConversation() {
    return { id: Date.now().toString(36) + Math.random().toString(36).slice(2, 8), title: "", updated: Date.now(), messages: [] };
  }

  function text(value) {
    return typeof value === "string" ? value : "";
  }

  function loadStore() {
    let stored = null;
    try {
      stored = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    } catch (_) {
      stored = null;
    }
    const conversations = [];
    if (stored && Array.isArray(stored.conversations)) {
      for (const item of stored.conversations.slice(0, MAX_CONVERSATIONS)) {
        if (!item || typeof item.id !== "string" || !Array.isArray(item.messages)) continue;
        const messages = item.messages
          .filter((m) => m && (m.role === "user" || m.role === "assistant"))
          .map((m) => ({
            role: m.role,
            content: text(m.content),
            reasoning: text(m.reasoning),
            task: TASKS.includes(m.task) ? m.task : "math",
            note: text(m.note),
          }));
        conversations.push({ id: item.id, title: text(item.title), updated: Number(item.updated) || 0, messages });
      }
    }
    let current = conversations.find((c) => stored && c.id === stored.current);
    if (!current) {
      current = newConversation();
      conversations.unshift(current);
    }
    return { conversations, current };
  }

  function saveStore() {
    const kept = store.conversations.filter((c) => c.messages.length || c === store.current);
    kept.sort((a, b) => b.updated - a.updated);
    store.conversations = kept.slice(0, MAX_CONVERSATIONS);
    if (!store.conversations.includes(store.current)) store.conversations.unshift(store.current);
    while (store.conversations.length) {
      try {
        const data = { current: store.current.id, conversations: store.conversations };
        localStorage.setItem(STORE_KEY, JSON.stringify(data));
        break;
      } catch (_) { // full: drop the oldest other conversation
        const oldest = store.conversations.findLastIndex((c) => c !== store.current);
        if (oldest < 0) break;
        store.conversations.splice(oldest, 1);
      }
    }
    fillHistory();
  }

  function fillHistory() {
    ui.history.replaceChildren();
    for (const conversation of store.conversations) {
      const option = document.createElement("option");
      option.value = conversation.id;
      const when = conversation.updated ? new Date(conversation.updated).toLocaleString() : "";
      option.textContent = (conversation.title || "New conversation") + (when && conversation.messages.length ? " · " + when : "");
      ui.history.append(option);
    }
    ui.history.value = store.current.id;
  }

  function prefs() {
    try {
      return JSON.parse(localStorage.getItem(PREFS_KEY) || "{}") || {};
    } catch (_) {
      return {};
    }
  }

  function savePrefs() {
    try {
      localStorage.setItem(PREFS_KEY, JSON.stringify({ task: ui.task.value, budget: ui.budget.value, model: ui.model.value }));
    } catch (_) { /* full */ }
  }

  // ---- messages ----

  function element(tag, className, content) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (content !== undefined) node.textContent = content;
    return node;
  }

  function textBox(className) {
    const box = element("div", className);
    box.append(element("div", "md"), element("span", "tail"));
    return box;
  }

  function userView(message) {
    const item = element("li", "message user");
    const body = textBox("text");
    item.append(element("div", "who", "You"), body);
    ui.conversation.append(item);
    const live = new LiveText(body, null);
    live.set(message.content);
    return live.finish();
  }

  function assistantView(message) {
    const item = element("li", "message assistant");
    const who = element("div", "who", "Tutor · " + message.task);
    const details = element("details", "reasoning");
    const summary = element("summary");
    const label = element("span", "label", "Reasoning");
    const stats = element("span", "stats");
    summary.append(label, " ", stats);
    const reasoningBody = textBox("reasoning-text");
    details.append(summary, reasoningBody);
    const answerBox = element("div", "answer-box");
    answerBox.hidden = true;
    answerBox.setAttribute("role", "region");
    answerBox.setAttribute("aria-label", "Answer");
    const answerValue = element("div", "answer-value");
    answerBox.append(element("div", "answer-label", "Answer"), answerValue);
    const content = textBox("content");
    const meta = element("p", "meta");
    const error = element("p", "error");
    error.setAttribute("role", "alert");
    error.hidden = true;
    item.append(who, details, answerBox, content, error, meta);
    ui.conversation.append(item);
    const view = {
      item, details, label, stats, meta, error,
      reasoning: new LiveText(reasoningBody, null, (answer, md) => decorateCode(md, null)),
      content: new LiveText(content, message.task, (answer, md) => {
        decorateCode(md, message.task);
        if (answer) setHTML(answerValue, answer);
        answerBox.hidden = !answer;
        // a reply that is only its box is shown once, as the answer
        content.hidden = Boolean(answer) && ONLY_A_BOX.test(view.content.text);
      }),
    };
    details.hidden = !message.reasoning;
    return view;
  }

  async function showStoredAssistant(message) {
    const view = assistantView(message);
    view.reasoning.set(message.reasoning);
    view.content.set(message.content);
    view.details.open = !message.content;
    view.meta.textContent = message.note;
    await Promise.all([view.reasoning.finish(), view.content.finish()]);
  }

  let showing = 0;

  async function showConversation() {
    const number = ++showing;
    ui.conversation.replaceChildren();
    const messages = store.current.messages;
    ui.empty.hidden = messages.length > 0;
    fillHistory();
    for (const message of messages) {
      if (number !== showing) return;
      if (message.role === "user") await userView(message);
      else await showStoredAssistant(message);
    }
  }

  function scrollToEnd() {
    const last = ui.conversation.lastElementChild;
    if (last) last.scrollIntoView({ block: "end" });
  }

  // ---- asking ----

  function apiMessages(messages) {
    const result = [];
    for (const message of messages) {
      if (message.role === "assistant" && !message.content) continue;
      result.push({ role: message.role, content: message.content });
    }
    return result;
  }

  function seconds(ms) {
    if (ms < 1000) return Math.round(ms) + " ms";
    return (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + " s";
  }

  async function ask(problem) {
    const task = ui.task.value;
    const budgetValue = parseInt(ui.budget.value, 10);
    const budget = Number.isInteger(budgetValue) && budgetValue > 0 ? budgetValue : null;
    const conversation = store.current;
    const user = { role: "user", content: problem, reasoning: "", task, note: "" };
    conversation.messages.push(user);
    if (!conversation.title) conversation.title = problem.replace(/\s+/g, " ").slice(0, 48);
    conversation.updated = Date.now();
    saveStore();
    ui.empty.hidden = true;
    userView(user);

    const reply = { role: "assistant", content: "", reasoning: "", task, note: "" };
    const view = assistantView(reply);
    view.item.classList.add("streaming");
    view.details.hidden = false;
    view.details.open = true;
    view.label.textContent = "Thinking";
    scrollToEnd();
    const controller = new AbortController();
    streaming = { controller, stopped: false };
    setBusy(true);
    setStatus("Thinking…");

    const body = {
      model: ui.model.value || undefined,
      messages: apiMessages(conversation.messages),
      stream: true,
      stream_options: { include_usage: true },
      task,
    };
    if (budget) body.budget = budget;
    const started = performance.now();
    let first = 0;
    let reasoningTokens = 0;
    let answerTokens = 0;
    let finish = null;
    let report = null;
    let usage = null;
    let failure = "";
    let folded = false;

    const showStats = () => {
      const now = performance.now();
      const elapsed = first ? (now - first) / 1000 : 0;
      const speed = elapsed > 0.05 ? (reasoningTokens + answerTokens) / elapsed : 0;
      const parts = [reasoningTokens + " tokens"];
      if (speed) parts.push(speed.toFixed(speed < 10 ? 1 : 0) + " tok/s");
      if (budget && !folded) {
        const left = Math.max(0, budget - reasoningTokens);
        parts.push(speed ? "about " + Math.ceil(left / speed) + " s left of " + budget : "budget " + budget);
      }
      view.stats.textContent = "· " + parts.join(" · ");
    };

    const onDelta = (delta) => {
      const reasoning = typeof delta.reasoning_content === "string" ? delta.reasoning_content : "";
      const content = typeof delta.content === "string" ? delta.content : "";
      if (!reasoning && !content) return;
      if (!first) first = performance.now();
      if (reasoning) {
        reasoningTokens += 1;
        reply.reasoning += reasoning;
        view.reasoning.set(reply.reasoning);
      }
      if (content) {
        answerTokens += 1;
        reply.content += content;
        view.content.set(reply.content);
        if (!folded) {
          folded = true;
          view.details.open = false; // the answer has begun: fold the reasoning
          view.label.textContent = "Reasoning";
          setStatus("Answering…");
        }
      }
      showStats();
    };

    try {
      const response = await call("v1/chat/completions", body, controller.signal);
      if (!response.ok) throw new Error(await errorText(response));
      await readEvents(response, (event) => {
        if (event.error) {
          failure = typeof event.error.message === "string" ? event.error.message : "the reply failed";
          return;
        }
        if (event.x_mllm_cpu) report = event.x_mllm_cpu;
        if (event.usage) usage = event.usage;
        for (const choice of Array.isArray(event.choices) ? event.choices : []) {
          if (choice.delta) onDelta(choice.delta);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      });
    } catch (error) {
      if (streaming && streaming.stopped) failure = "";
      else if (error instanceof KeyNeeded) failure = "The board needs its key; give it and ask again.";
      else failure = error.name === "AbortError" ? "" : "The reply failed: " + error.message;
    }
    const stopped = streaming.stopped;
    streaming = null;
    const elapsed = performance.now() - started;
    view.item.classList.remove("streaming");
    if (report && Number.isInteger(report.reasoning_tokens)) reasoningTokens = report.reasoning_tokens;
    const total = usage && Number.isInteger(usage.completion_tokens) ? usage.completion_tokens : reasoningTokens + answerTokens;
    view.label.textContent = reply.reasoning ? "Reasoning" : "No reasoning";
    view.stats.textContent = "· " + reasoningTokens + " tokens";
    view.details.hidden = !reply.reasoning;
    if (!reply.content) view.details.open = true;
    const notes = [total + " tokens in " + seconds(elapsed)];
    if (elapsed > 0 && total) notes.push((total / (elapsed / 1000)).toFixed(1) + " tok/s");
    if (report && report.forced) notes.push("the thinking budget (" + report.budget + ") ran out, so the answer was forced");
    if (stopped) notes.push("stopped");
    else if (finish === "length") notes.push("cut off at the token limit");
    reply.note = notes.join(" · ");
    view.meta.textContent = reply.note;
    if (failure) {
      view.error.textContent = failure;
      view.error.hidden = false;
    }
    conversation.messages.push(reply);
    conversation.updated = Date.now();
    saveStore();
    setBusy(false);
    setStatus(stopped ? "Stopped" : failure ? "Something went wrong" : "Ready");
    view.item.classList.add("ended");
    await Promise.all([view.reasoning.finish(), view.content.finish()]);
    view.item.classList.add("done");
    scrollToEnd();
  }

  // Server-sent events from a fetch body: "data: {json}" lines, events apart by a blank line.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        let event;
        try {
          event = JSON.parse(data);
        } catch (_) {
          continue;
        }
        if (event && typeof event === "object") onEvent(event);
      }
    }
  }

  function setBusy(busy) {
    ui.send.disabled = busy;
    ui.stop.disabled = !busy;
    ui.conversation.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function stop() {
    if (!streaming) return;
    streaming.stopped = true;
    streaming.controller.abort(); // the server sees the client leave and frees the slot
  }

  ui.ask.addEventListener("submit", (event) => {
    event.preventDefault();
    const problem = ui.problem.value.trim();
    if (!problem || streaming || !connected) return;
    ui.problem.value = "";
    savePrefs();
    ask(problem);
  });

  ui.problem.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      ui.ask.requestSubmit();
    }
  });

  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && streaming) stop();
  });

  ui.stop.addEventListener("click", stop);

  ui.newConversation.addEventListener("click", () => {
    stop();
    store.current = newConversation();
    store.conversations.unshift(store.current);
    saveStore();
    showConversation();
    ui.problem.focus();
  });

  ui.history.addEventListener("change", () => {
    const chosen = store.conversations.find((c) => c.id === ui.history.value);
    if (!chosen || chosen === store.current) return;
    stop();
    store.current = chosen;
    saveStore();
    showConversation();
  });

  for (const control of [ui.task, ui.budget, ui.model]) control.addEventListener("change", savePrefs);

  const saved = prefs();
  if (TASKS.includes(saved.task)) ui.task.value = saved.task;
  if (typeof saved.budget === "string" && /^\d*$/.test(saved.budget)) ui.budget.value = saved.budget;
  fillHistory();
  connect();
})();
